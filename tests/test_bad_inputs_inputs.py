"""Bad inputs of evaluate, robust_accuracy, measure_latency, fit, create_loaders and create_model (issue 12,
area "inputs"): each is refused with a RobustPruneError before anything is changed.

One case per line: ``Case(id, call(model), regex the message must match)``; the harness
(tests/badinput.py) also checks that the model is unchanged (weights, parameter objects,
train/eval modes, requires_grad, .grad, hooks, pruning history).
"""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import pytest
import torch
from badinput import Case, expect_refusal
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robustprune import _torchvision_data
from robustprune.attacks import (
    AdversarialConfig,
    fgsm_rs,
    pgd,
    robust_accuracy,
    trades_attack,
    trades_loss,
    trades_objective,
)
from robustprune.data import create_datasets, create_loaders
from robustprune.errors import DatasetNotFoundError, RobustPruneError, TrainingDivergedError
from robustprune.evaluation import evaluate, measure_latency
from robustprune.models import create_model
from robustprune.pruners.schedules import ScheduledPruning
from robustprune.train import DistillConfig, fit

N = 16
G = torch.Generator().manual_seed(0)
X = torch.rand(N, 1, 8, 8, generator=G)
Y = torch.randint(0, 10, (N,), generator=G)


def loader(x: torch.Tensor = X, y: torch.Tensor = Y, batch_size: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def two_shapes() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(X[:8], Y[:8]), (torch.rand(8, 1, 9, 9), Y[8:])]


class TupleOut(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.inner(x)
        return out, out


class NanOut(TupleOut):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(x) * float("nan")


def meta_fcn() -> nn.Module:
    """A model without values: its tensors on the meta device."""
    return create_model("fcn", width=8).to("meta")


def fcn(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return create_model("fcn", width=width)


@pytest.fixture
def model() -> nn.Module:
    """A CNN with BatchNorm (its running statistics must survive a refused step), in train
    mode with one frozen eval-mode BatchNorm (modes are restored module by module)."""
    torch.manual_seed(0)
    net = create_model("cnn-small", widths=(4, 8))
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    bn.eval()
    return net


def ev(data, **kw):
    return lambda m: evaluate(m, data, latency=False, progress=False, **kw)


def ra(data=(X, Y), **kw):
    kw.setdefault("eps", 0.1)
    return lambda m: robust_accuracy(m, data, n_iter=2, progress=False, **kw)


EVALUATE = [
    Case("labels-B1", ev(loader(y=Y.view(-1, 1))), r"labels have shape \(8, 1\).*view\(-1\)"),
    Case("labels-float", ev(loader(y=Y.float())), r"labels are torch.float32"),
    Case("labels-bool", ev((X, Y > 4)), r"labels are torch.bool"),
    Case("label-15", ev(loader(y=torch.where(Y == 3, 15, Y))), r"label is 15.*10 outputs"),
    Case("label-neg", ev(loader(y=torch.where(Y == 3, -1, Y))), r"label is -1"),
    Case("inputs-nan", ev(loader(x=torch.where(X > 0.9, float("nan"), X))), r"NaN or infinite"),
    Case("inputs-inf", ev((torch.where(X > 0.9, float("inf"), X), Y)), r"NaN or infinite"),
    Case("inputs-x5", ev(loader(x=X * 5)), r"outside \[0, 1\]"),
    Case("inputs-neg", ev(loader(x=-X)), r"outside \[0, 1\]"),
    Case("inputs-x255", ev(loader(x=X * 255)), r"outside \[0, 1\].*255"),
    Case("inputs-uint8", ev((X.mul(255).to(torch.uint8), Y)), r"floating point"),
    Case("bare-tensors", ev(iter([X[:8], X[8:]])), r"expected \(inputs, labels\) pairs"),
    Case("one-tensor-dataset", ev(DataLoader(TensorDataset(X), batch_size=8)), r"\(inputs, labels\)"),
    Case("list-of-two-batches", ev([X[:8], X[8:]]), r"labels have shape"),
    Case("lengths-differ", ev((X, Y[:5])), r"16 inputs but 5 labels"),
    Case("labels-0d", ev((X, Y[0])), r"labels have shape \(\)"),
    Case("no-batch-dim", ev([(X[0, 0, 0], Y[:1])]), r"N >= 1"),
    Case("wrong-input-shape", ev(loader(x=torch.rand(N, 3, 8, 8))), r"cannot run on the data's inputs"),
    Case("shapes-change", ev(two_shapes()), r"first batch had \(1, 8, 8\)"),
    Case("tuple-output", lambda m: evaluate(TupleOut(m), (X, Y), latency=False, progress=False), r"returned a tuple"),
    Case("nan-logits", lambda m: evaluate(NanOut(m), (X, Y), latency=False, progress=False), r"NaN or infinite logits"),
    Case("meta-model", lambda m: evaluate(meta_fcn(), (X, Y), progress=False), r"meta device"),
    Case("batch-size-0", ev((X, Y), batch_size=0), r"batch_size"),
    Case("batch-size-str", ev((X, Y), batch_size="64"), r"batch_size"),
    Case("n-examples-bool", ev((X, Y), eps=0.1, n_examples=True), r"n_examples must be an integer"),
    Case("n-examples-float", ev((X, Y), eps=0.1, n_examples=2.5), r"n_examples must be an integer"),
    Case("n-examples-0", ev((X, Y), eps=0.1, n_examples=0), r"n_examples"),
    Case("eps-huge-linf", ev((X, Y), eps=1e6), r"eps=1000000.0 under Linf"),
    Case("eps-str", ev((X, Y), eps="a"), r"eps must be a finite number"),
    Case("eps-nan", ev((X, Y), eps=float("nan")), r"eps must be a finite number"),
    Case("eps-neg", ev((X, Y), eps=-0.1), r"eps must be a finite number"),
    Case("norm-L1", ev((X, Y), eps=0.1, norm="L1"), r"Unknown norm 'L1'"),
    Case("seed-str", ev((X, Y), eps=0.1, seed="a"), r"seed"),
    Case("n-iter-0", ev((X, Y), eps=0.1, n_iter=0), r"n_iter"),
    Case("attacks-int", ev((X, Y), eps=0.1, attacks=5), r"attacks"),
]

ROBUST = [
    Case("labels-B1", ra((X, Y.view(-1, 1))), r"labels have shape"),
    Case("label-15", ra((X, torch.full((N,), 15))), r"label is 15.*10 outputs"),
    Case("inputs-nan", ra((torch.full_like(X, float("nan")), Y)), r"NaN or infinite"),
    Case("inputs-x255", ra((X * 255, Y)), r"outside \[0, 1\]"),
    Case("bare-tensors", ra(iter([X[:8], X[8:]])), r"expected \(inputs, labels\) pairs"),
    Case("wrong-input-shape", ra((torch.rand(N, 3, 8, 8), Y)), r"cannot run on the data's inputs"),
    Case("shapes-change", ra(two_shapes(), batch_size=8), r"same per-example shape"),
    Case("tuple-output", lambda m: robust_accuracy(TupleOut(m), (X, Y), eps=0.1, progress=False), r"returned a tuple"),
    Case("nan-logits", lambda m: robust_accuracy(NanOut(m), (X, Y), eps=0.1, progress=False), r"NaN or infinite logits"),
    Case("meta-model", lambda m: robust_accuracy(meta_fcn(), (X, Y), eps=0.1, progress=False), r"meta device"),
    Case("lengths-differ-cut", ra((X, Y[:5]), n_examples=3), r"16 inputs but 5 labels"),
    Case("n-examples-bool", ra(n_examples=True), r"n_examples must be an integer"),
    Case("n-examples-float", ra(n_examples=2.5), r"n_examples must be an integer"),
    Case("eps-huge-linf", ra(eps=1e6), r"under Linf"),
    Case("eps-huge-l2", ra(eps=1e6, norm="L2"), r"exceeds sqrt\(64\)"),
    Case("eps-str", ra(eps="a"), r"eps must be a finite number"),
    Case("batch-size-float", ra(batch_size=2.5), r"batch_size"),
    Case("attacks-unknown", ra(attacks=["nope"]), r"nope"),
]



def lat(shape=(1, 8, 8), device="cpu", **kw):
    kw.setdefault("runs", 1)
    return lambda m: measure_latency(m, shape, device, **kw)


LATENCY = [
    Case("batches-0", lat(batches=(0,)), r"batches must be an integer >= 1"),
    Case("batches-neg", lat(batches=(1, -2)), r"batches must be an integer >= 1.*-2"),
    Case("batches-str", lat(batches="64"), r"batches must be a non-empty sequence"),
    Case("batches-empty", lat(batches=()), r"batches must be a non-empty sequence"),
    Case("batches-float", lat(batches=(1.5,)), r"batches must be an integer"),
    Case("runs-0", lat(runs=0), r"runs must be an integer >= 1"),
    Case("warmup-neg", lat(warmup=-1), r"warmup must be an integer >= 0"),
    Case("threads-0", lat(threads=0), r"threads must be an integer >= 1"),
    Case("channels-last-str", lat(channels_last="yes"), r"channels_last must be True or False"),
    Case("shape-str", lat(shape="1,8,8"), r"input_shape must be the shape of one example"),
    Case("shape-empty", lat(shape=()), r"input_shape must be the shape of one example"),
    Case("shape-zero", lat(shape=(1, 0, 8)), r"input_shape \(each size\) must be >= 1"),
    Case("shape-wrong-channels", lat(shape=(3, 8, 8)), r"input_shape \(3, 8, 8\).*cannot run"),
    Case("shape-wrong-channels-cl", lat(shape=(3, 8, 8), channels_last=True), r"cannot run"),
    Case("device-unknown", lat(device="tpu"), r"Unknown device 'tpu'"),
    Case("meta-model", lambda m: measure_latency(meta_fcn(), (64,), "cpu", runs=1), r"meta device"),
] + ([] if torch.cuda.is_available() else [Case("device-no-cuda", lat(device="cuda"), r"CUDA is not available")])


@pytest.mark.parametrize("case", LATENCY, ids=repr)
def test_measure_latency_refuses(case: Case, model: nn.Module) -> None:
    expect_refusal(case, model)


def test_measure_latency_takes_a_device_name_and_leaves_the_model_as_it_was(model: nn.Module) -> None:
    modes = [m.training for m in model.modules()]
    out = measure_latency(model, (1, 8, 8), "cpu", batches=(1, 2), warmup=0, runs=1, channels_last=True)
    assert set(out) == {"batch1", "batch2"} and all(v > 0 for v in out.values())
    assert [m.training for m in model.modules()] == modes
    assert all(p.is_contiguous() for p in model.parameters())
    model.to(memory_format=torch.channels_last)  # a user's channels-last model stays so
    measure_latency(model, (1, 8, 8), "cpu", batches=(1,), warmup=0, runs=1, channels_last=True)
    convs = [p for p in model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


@pytest.mark.parametrize("case", EVALUATE, ids=repr)
def test_evaluate_refuses(case: Case, model: nn.Module) -> None:
    expect_refusal(case, model)


@pytest.mark.parametrize("case", ROBUST, ids=repr)
def test_robust_accuracy_refuses(case: Case, model: nn.Module) -> None:
    expect_refusal(case, model)


@pytest.mark.parametrize("what", ["directory", "corrupt-json", "other-model", "parent-is-file", "not-a-path"])
@pytest.mark.parametrize("call", ["evaluate", "robust_accuracy"])
def test_bad_state_path_is_refused_and_restores_modes(what: str, call: str, model: nn.Module, tmp_path: Path) -> None:
    path: object = tmp_path / "state.json"
    if what == "directory":
        path = tmp_path
    elif what == "corrupt-json":
        Path(path).write_text("{not json")
    elif what == "other-model":
        Path(path).write_text(json.dumps({"settings": {"checksum": [1.0, 2.0, 3.0]}, "done": {}}))
    elif what == "parent-is-file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "state.json"
    else:
        path = 3
    fn = evaluate if call == "evaluate" else robust_accuracy
    extra = {"latency": False} if call == "evaluate" else {}
    expect_refusal(
        Case(what, lambda m: fn(m, (X, Y), eps=0.1, n_iter=2, progress=False, state_path=path, **extra)),
        model,
    )


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(min_value=1.0, max_value=1e12, exclude_min=True, allow_nan=False))
def test_linf_budgets_above_one_are_refused(eps: float) -> None:
    net = fcn()
    expect_refusal(Case("eps", lambda m: robust_accuracy(m, (X, Y), eps=eps, progress=False), r"under Linf"), net)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(min_value=1.001, max_value=1e6), shift=st.floats(min_value=-1e3, max_value=-1e-3))
def test_inputs_outside_unit_range_are_refused(scale: float, shift: float) -> None:
    net = fcn().eval()
    for x in (X * scale, X + shift):
        if float(x.min()) >= -1e-5 and float(x.max()) <= 1 + 1e-5:
            continue
        expect_refusal(Case("range", ev((x, Y)), r"outside \[0, 1\]"), net)


# --------------------------------------------------------------------------- fit


def ft(data=None, **kw):
    data = (loader(), None) if data is None else (data, None)
    return lambda m: fit(m, data, 1, progress=False, **kw)


def returns_float(model: nn.Module) -> float:
    return 0.5


def returns_nan(model: nn.Module) -> torch.Tensor:
    return next(model.parameters()).sum() * float("nan")


FIT = [
    Case("lr-nan", ft(lr=float("nan")), r"lr"),
    Case("lr-inf", ft(lr=float("inf")), r"lr"),
    Case("lr-str", ft(lr="0.1"), r"lr"),
    Case("lr-0", ft(lr=0.0), r"lr"),
    Case("momentum-nan", ft(momentum=float("nan")), r"momentum"),
    Case("weight-decay-neg", ft(weight_decay=-1), r"weight_decay"),
    Case("warmup-neg", ft(warmup_epochs=-2), r"warmup_epochs"),
    Case("seed-str", ft(seed="a"), r"seed must be an integer"),
    Case("seed-neg", ft(seed=-1), r"seed must be an integer"),
    Case("pgd-steps-0", ft(adversarial={"kind": "pgd", "eps": 0.1, "steps": 0}), r"steps >= 1"),
    Case("trades-steps-0", lambda m: AdversarialConfig(kind="trades", eps=0.1, steps=0), r"steps >= 1"),
    Case("adv-eps-huge", ft(adversarial={"kind": "pgd", "eps": 8, "steps": 2}), r"under Linf"),
    Case("adv-l2-eps-huge", ft(adversarial={"kind": "pgd", "eps": 100.0, "steps": 2, "norm": "L2"}), r"sqrt\(64\)"),
    Case("labels-B1", ft(loader(y=Y.view(-1, 1))), r"labels have shape \(8, 1\).*no update was made"),
    Case("labels-float", ft(loader(y=Y.float())), r"labels are torch.float32"),
    Case("label-15", ft(loader(y=torch.where(Y == 3, 15, Y))), r"label is 15.*10 outputs"),
    Case("label-neg", ft(loader(y=torch.where(Y == 3, -1, Y))), r"label is -1"),
    Case("inputs-nan", ft(loader(x=torch.where(X > 0.9, float("nan"), X))), r"NaN or infinite"),
    Case("inputs-x255", ft(loader(x=X * 255)), r"outside \[0, 1\]"),
    Case("wrong-input-shape", ft(loader(x=torch.rand(N, 3, 8, 8))), r"cannot run on the data's inputs"),
    Case("bare-tensors", ft(DataLoader(TensorDataset(X), batch_size=8)), r"\(inputs, labels\)"),
    Case("regularizer-float", ft(regularizers=[returns_float]), r"returns_float returned a float.*no update"),
    Case("regularizer-not-list", ft(regularizers=returns_float), r"regularizers must be a list"),
    Case("nan-loss-step-1", ft(regularizers=[returns_nan], lr=0.05),
         r"epoch 1, batch 1, lr=0\.05; detected before the update"),
    Case("meta-model", lambda m: fit(meta_fcn(), (loader(), None), 1, progress=False), r"meta device"),
    Case("momentum-1.5", ft(momentum=1.5), r"momentum must be in \[0, 1\)"),
    Case("min-lr-above-lr", ft(min_lr=1.0), r"min_lr \(1\) must be <= lr"),
    Case("warmup-longer-than-training", ft(warmup_epochs=5), r"warmup_epochs = 5 is longer than the training"),
    Case("on-epoch-end-int", ft(on_epoch_end=3), r"on_epoch_end must be a callable"),
    Case("one-logit-model", lambda m: fit(create_model("fcn", width=8, num_classes=1), (loader(), None), 1,
                                          progress=False), r"the model has 1 output"),
    Case("distill-adversarial-without-attack",
         lambda m: fit(m, (loader(), None), 1, progress=False, distill=DistillConfig(teacher=fcn(), target="adversarial")),
         r"target='adversarial'.*no adversarial= training"),
    Case("pruning-example-wrong-shape",
         lambda m: fit(m, (loader(), None), 1, progress=False,
                       pruning=ScheduledPruning(target_macs=0.5, example_inputs=torch.rand(2, 3, 8, 8))),
         r"ScheduledPruning.example_inputs.*cannot run"),
    Case("one-channel-data-for-three-channel-model",
         lambda m: evaluate(create_model("cnn-small", widths=(4, 8), input_shape=(3, 8, 8)), (X, Y), latency=False,
                            progress=False), r"1 channel\(s\).*statistics for 3"),
]

# the training attacks, called directly: refused before the model runs (a train-mode forward
# would update the BatchNorm statistics the harness checks)


def atk(fn=None, x=X[:4], y=Y[:4], **kw):
    kw.setdefault("eps", 0.1)
    fn = fn or pgd
    return lambda m: fn(m, x, y, **kw)


ATTACKS = [
    Case("step-nan", atk(step_size=float("nan")), r"step_size must be a finite number >= 0"),
    Case("trades-step-neg", lambda m: trades_attack(m, X[:4], eps=0.1, steps=2, step_size=-1.0), r"step_size"),
    Case("x-nan", atk(x=X[:4] * float("nan")), r"attack's inputs: .*NaN or infinite"),
    Case("x-255", atk(fgsm_rs, x=X[:4] * 255), r"outside \[0, 1\]"),
    Case("x-int", atk(x=(X[:4] * 255).long()), r"inputs are torch.int64; they must be floating point"),
    Case("x-channels", atk(x=torch.rand(4, 3, 8, 8)), r"cannot run on x of shape \(3, 8, 8\)"),
    Case("random-start-str", atk(random_start="yes"), r"random_start must be True or False"),
    Case("seed-neg", atk(seed=-1), r"seed must be an integer"),
    Case("generator-int", atk(generator=3), r"generator must be a torch.Generator"),
    Case("label-15", atk(y=torch.full((4,), 15)), r"a label is 15, but the model has 10 outputs"),
    Case("labels-float", atk(y=Y[:4].float()), r"labels are torch.float32; labels must be integer class indices"),
    Case("labels-B1", atk(y=Y[:4].view(-1, 1)), r"labels have shape \(4, 1\).*view\(-1\)"),
    Case("labels-short", atk(y=Y[:2]), r"4 inputs but 2 labels"),
    Case("labels-list", atk(y=[0, 1, 2, 3]), r"expected \(inputs, labels\) tensors, got \(Tensor, list\)"),
    Case("model-str", lambda m: pgd("m", X[:4], Y[:4], eps=0.1), r"needs a torch.nn.Module"),
    Case("trades-beta-nan", atk(trades_loss, beta=float("nan")), r"TRADES beta must be a finite number"),
    Case("trades-beta-bool", atk(trades_loss, beta=True), r"TRADES beta must be a finite number"),
    Case("objective-beta-str", lambda m: trades_objective(torch.randn(4, 10), torch.randn(4, 10), Y[:4], "a"),
         r"TRADES beta"),
]


@pytest.mark.parametrize("case", ATTACKS, ids=repr)
def test_training_attacks_refuse(case: Case, model: nn.Module) -> None:
    expect_refusal(case, model)


@pytest.mark.parametrize("case", FIT, ids=repr)
def test_fit_refuses(case: Case, model: nn.Module) -> None:
    expect_refusal(case, model)


def test_fit_nan_loss_names_the_real_step(model: nn.Module) -> None:
    """A loss that turns NaN at step 3 is reported as step 3 (not the next multiple of 10),
    and no NaN update is applied: the weights stay finite."""
    calls = {"n": 0}

    def nan_at_3(m: nn.Module) -> torch.Tensor:
        calls["n"] += 1
        zero = next(m.parameters()).sum() * 0
        return zero * float("nan") if calls["n"] == 3 else zero

    data = (loader(batch_size=4), None)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, batch 3, lr=0\.05.*not applied") as info:
        fit(model, data, 1, lr=0.05, scheduler=None, regularizers=[nan_at_3], progress=False)
    assert "(epoch 1, batch 2)" in str(info.value)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


def test_fit_bad_test_loader_is_refused_after_the_epoch(model: nn.Module) -> None:
    with pytest.raises(RobustPruneError, match=r"test loader.*labels have shape.*after the epoch's updates"):
        fit(model, (loader(), loader(y=Y.view(-1, 1))), 1, progress=False)
    assert model.training


def test_fit_checkpoint_dir_that_is_a_file(model: nn.Module, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    expect_refusal(Case("file", ft(checkpoint_dir=tmp_path / "f"), r"is a file, not a folder"), model)
    expect_refusal(Case("below-file", ft(checkpoint_dir=tmp_path / "f" / "sub"), r"cannot be created"), model)


def test_fit_resuming_a_wider_model_loads_nothing(tmp_path: Path) -> None:
    fit(fcn(width=24), (loader(), None), 1, checkpoint_dir=tmp_path, progress=False)
    expect_refusal(Case("wider", ft(checkpoint_dir=tmp_path), r"has shape \(24, 64\).*Nothing was loaded"), fcn())


# --------------------------------------------------------------------------- data and models


def cl(*args, **kw):
    return lambda m: create_loaders(*args, **kw)


def cm(*args, **kw):
    return lambda m: create_model(*args, **kw)


DATA = [
    Case("batch-size-str", cl("synthetic", batch_size="64"), r"batch_size must be an integer"),
    Case("batch-size-none", cl("synthetic", batch_size=None), r"batch_size must be an integer"),
    Case("batch-size-float", cl("synthetic", batch_size=2.5), r"batch_size must be an integer"),
    Case("batch-size-bool", cl("synthetic", batch_size=True), r"batch_size must be an integer"),
    Case("test-batch-size-neg", cl("synthetic", test_batch_size=-5), r"test_batch_size"),
    Case("test-batch-size-0", cl("synthetic", test_batch_size=0), r"test_batch_size"),
    Case("num-workers-neg", cl("synthetic", num_workers=-1), r"num_workers"),
    Case("digits-size-str", cl("digits", size="a"), r"size must be an integer"),
    Case("digits-size-float", cl("digits", size=8.5), r"size must be an integer"),
    Case("digits-size-huge", cl("digits", size=100000), r"size must be an integer in \[8, 512\]"),
    Case("digits-size-neg", cl("digits", size=-3), r"size must be an integer"),
    Case("seed-str", cl("synthetic", seed="x"), r"seed must be an integer"),
    Case("synthetic-shape-str", cl("synthetic", shape="abc"), r"shape must be \(C, H, W\)"),
    Case("synthetic-shape-huge", cl("synthetic", shape=(3, 4096, 4096)), r"at most"),
    Case("synthetic-classes-1", cl("synthetic", num_classes=1), r"num_classes"),
    Case("unknown-dataset", cl(3), r"Unknown dataset 3"),
    Case("download-str", cl("synthetic", download="yes"), r"download must be True or False"),
    Case("num-classes-str", cm("fcn", num_classes="10"), r"num_classes must be an integer"),
    Case("num-classes-0", cm("fcn", num_classes=0), r"num_classes"),
    Case("resnet-width-0", cm("resnet18-cifar", width=0), r"width must be an integer >= 1"),
    Case("fcn-width-0", cm("fcn", width=0), r"width must be an integer >= 1"),
    Case("fcn-depth-float", cm("fcn", depth=2.5), r"depth must be an integer"),
    Case("cnn-widths-0", cm("cnn-small", widths=(0, 8)), r"widths must be"),
    Case("cnn-too-many-pools", cm("cnn-small", widths=(4, 4, 4, 4, 4)), r"max-pools"),
    Case("vgg-width-mult-nan", cm("vgg16-cifar", width_mult=math.nan), r"width_mult"),
    Case("input-shape-2d", cm("fcn", input_shape=(8, 8)), r"input_shape must be \(C, H, W\)"),
    Case("std-zero", cm("fcn", mean=[0.5], std=[0.0]), r"std must be"),
    Case("mean-wrong-length", cm("fcn", input_shape=(3, 8, 8), mean=[0.5, 0.5], std=[1.0] * 3), r"mean must be"),
    Case("model-name-int", cm(3), r"must be a string"),
]


@pytest.mark.parametrize("case", DATA, ids=repr)
def test_data_and_model_arguments_are_refused(case: Case) -> None:
    expect_refusal(case, nn.Linear(2, 2))


def test_offline_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Offline:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_torchvision_data, "_torchvision_classes", lambda: {"cifar10": Offline})
    with pytest.raises(DatasetNotFoundError, match=r"offline.*download=False"):
        create_datasets("cifar10", root=tmp_path, download=True)
    with pytest.raises(RobustPruneError):
        create_loaders("cifar10", root=tmp_path, download=True)


def test_valid_inputs_still_work(model: nn.Module) -> None:
    """The checks refuse nothing valid: labels of any int dtype, inputs exactly at 0 and 1."""
    x = X.clone()
    x[0].fill_(0.0)
    x[1].fill_(1.0)
    result = evaluate(model, (x, Y.int()), latency=False, progress=False)
    assert result.n == N
    fit(model, (loader(x), loader(x)), 1, progress=False)


def test_fit_refuses_a_train_batch_of_another_shape(model: nn.Module) -> None:
    with pytest.raises(RobustPruneError, match=r"epoch 1, batch 2.*first batch had \(1, 8, 8\).*epoch 1, batch 1"):
        fit(model, (two_shapes(), None), 1, progress=False)
