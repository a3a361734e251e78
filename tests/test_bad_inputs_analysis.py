"""Bad inputs to the analysis: ``analyze``, the metrics, the regularizers, ``Normalize``.

Every case is refused with a :class:`~robustprune.errors.RobustPruneError` whose message
says what was wrong, before anything runs, and the model is left exactly as it was
(:func:`badinput.expect_refusal`: state_dict, parameter identity, modes, requires_grad,
grads, hooks, history). One case per line.
"""

from __future__ import annotations

import math

import pytest
import torch
from badinput import Case, expect_refusal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustprune import metrics
from robustprune.analysis import analyze
from robustprune.errors import RobustPruneError
from robustprune.layers import LowRankLinear, Normalize
from robustprune.models import create_model
from robustprune.regularizers import Alignment, BetaDispersion, GroupLasso, NuclearNorm

X = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(0))


def _model() -> nn.Module:
    """A small CNN with BatchNorm and a Normalize, in train mode, with grads and a hook:
    everything a refused call must leave alone."""
    torch.manual_seed(0)
    model = create_model("cnn-small", widths=(4, 8), convs_per_stage=1, mean=[0.4], std=[0.3]).train()
    model(X).sum().backward()
    model.head.register_forward_hook(lambda *_: None)
    return model


def _a(**kwargs):
    """``analyze(model, X, **kwargs)`` as a case's call."""
    kwargs.setdefault("example_inputs", X[:1])
    return lambda m: analyze(m, **kwargs)


ANALYZE_CASES = [
    Case("eps-str", _a(eps="a"), "eps must be a number"),
    Case("eps-none", _a(eps=None), "eps must be a number"),
    Case("eps-bool", _a(eps=True), "eps must be a number"),
    Case("eps-list", _a(eps=[0.1]), "eps must be a number"),
    Case("eps-nan", _a(eps=float("nan")), r"eps must be in \(0, 1\)"),
    Case("eps-zero", _a(eps=0.0), r"eps must be in \(0, 1\)"),
    Case("eps-one", _a(eps=1.0), r"eps must be in \(0, 1\)"),
    Case("delta-str", _a(delta="big"), "delta must be a number"),
    Case("delta-bool", _a(delta=True), "delta must be a number"),
    Case("delta-list", _a(delta=[0.1]), "delta must be a number"),
    Case("delta-nan", _a(delta=float("nan")), "finite budget"),
    Case("delta-inf", _a(delta=math.inf), "finite budget"),
    Case("delta-negative", _a(delta=-1.0), "finite budget"),
    Case("delta-linf-above-1", _a(delta=2.0), "more than 1"),
    Case("delta-dict-str", _a(delta={"2": "x", "inf": 0.1}), r"delta\['2'\] must be a number"),
    Case("delta-dict-unknown-norm", _a(delta={"3": 0.1, "inf": 0.1}), "p must be '2' or 'inf'"),
    Case("delta-dict-missing", _a(delta={"2": 0.1}), "no budget"),
    Case("norms-none", _a(norms=None), "norms must be a sequence"),
    Case("norms-int", _a(norms=5), "norms must be a sequence"),
    Case("norms-empty", _a(norms=[]), "at least one"),
    Case("norms-unknown", _a(norms=("1",)), "p must be '2' or 'inf'"),
    Case("norms-none-inside", _a(norms=[None]), "p must be '2' or 'inf'"),
    Case("conv-norm-unknown", _a(conv_norm="exact"), "conv_norm"),
    Case("conv-norm-none", _a(conv_norm=None), "conv_norm"),
    Case("conv-norm-list", _a(conv_norm=["operator"]), "conv_norm"),
    Case("max-samples-zero", _a(max_samples=0), "max_samples must be >= 1"),
    Case("max-samples-negative", _a(max_samples=-3), "max_samples must be >= 1"),
    Case("max-samples-float", _a(max_samples=2.5), "max_samples must be a whole number"),
    Case("max-samples-str", _a(max_samples="a"), "max_samples must be a whole number"),
    Case("max-samples-bool", _a(max_samples=True), "max_samples must be a whole number"),
    Case("max-samples-nan", _a(max_samples=float("nan")), "max_samples must be a whole number"),
    Case("max-samples-none", _a(max_samples=None), "max_samples must be a whole number"),
    Case("alignment-samples-zero", _a(alignment_samples=0), "alignment_samples must be >= 1"),
    Case("alignment-samples-float", _a(alignment_samples=2.5), "alignment_samples must be a whole"),
    Case("alignment-samples-str", _a(alignment_samples="a"), "alignment_samples must be a whole"),
    Case("progress-str", _a(progress="yes"), "progress must be True or False"),
    Case("data-nan", _a(data=(X.clone().fill_(float("nan")), Y)), "non-finite"),
    Case("data-inf", _a(data=X.clone().fill_(math.inf)), "non-finite"),
    Case("data-above-1", _a(data=(X * 255, Y)), r"\[0, 1\]"),
    Case("data-negative", _a(data=(X - 1, Y)), r"\[0, 1\]"),
    Case("data-uint8", _a(data=((X * 255).to(torch.uint8), Y)), r"\[0, 1\]"),
    Case("data-wrong-shape", _a(data=(torch.rand(8, 3, 8, 8), Y)), r"does not accept data of shape \(1, 3, 8, 8\)"),
    Case("data-flat-for-conv", _a(data=torch.rand(8, 64)), "does not accept data"),
    Case("data-0d", _a(data=torch.tensor(0.5)), "batch"),
    Case("data-1d", _a(data=torch.rand(8)), "batch"),
    Case("data-empty", _a(data=torch.rand(0, 1, 8, 8)), "empty"),
    Case("data-str", _a(data="abc"), "data must be"),
    Case("data-int", _a(data=5), "data must be"),
    Case("data-list-of-floats", _a(data=[0.1, 0.2]), "tensors or"),
    Case("data-changing-shapes", _a(data=[(X, Y), (torch.rand(4, 1, 6, 6), Y[:4])]), "different input shapes"),
    Case("data-some-labels", _a(data=[(X, Y), X]), "labels and some do not"),
    Case("labels-2d", _a(data=(X, Y[:, None])), r"\(N,\)"),
    Case("labels-float", _a(data=(X, Y.float())), "integer class indices"),
    Case("labels-bool", _a(data=(X, Y > 4)), "integer class indices"),
    Case("labels-str", _a(data=(X, "abc")), "class indices"),
    Case("labels-too-many", _a(data=(X, torch.cat([Y, Y]))), "one per input"),
    Case("labels-15", _a(data=(X, torch.full((8,), 15))), r"in \[0, 9\]"),
    Case("labels-negative", _a(data=(X, torch.full((8,), -1))), r"in \[0, 9\]"),
    Case("example-wrong-shape", _a(example_inputs=torch.rand(1, 3, 8, 8)), r"shape \(1, 3, 8, 8\)"),
    Case("example-no-batch", _a(example_inputs=torch.rand(8, 8)), "does not accept example_inputs"),
    Case("example-0d", _a(example_inputs=torch.tensor(1.0)), "batch"),
    Case("example-empty", _a(example_inputs=torch.rand(0, 1, 8, 8)), "non-empty batch"),
    Case("example-nan", _a(example_inputs=torch.full((1, 1, 8, 8), float("nan"))), "finite"),
    Case("example-str", _a(example_inputs="abc"), "must be a tensor"),
    Case("example-tuple", _a(example_inputs=(X[:1], X[:1])), "one tensor"),
]


@pytest.mark.parametrize("case", ANALYZE_CASES, ids=repr)
def test_analyze_refuses_bad_arguments_and_leaves_the_model_unchanged(case):
    expect_refusal(case, _model())


def _inf_weights(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        m.features[0].weight[0, 0, 0, 0] = math.inf  # inf, not NaN: the snapshot compares with torch.equal
    return m


def _meta(m: nn.Module) -> nn.Module:
    return m.to("meta")


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


MODEL_CASES = [
    # (id, model factory, call, match)
    ("inf-weights", lambda: _inf_weights(_model()), _a(), r"features\.0\.weight"),
    ("no-prunable-layer", lambda: nn.Sequential(nn.Flatten(), nn.ReLU()), _a(example_inputs=torch.rand(1, 4)), "no prunable layer"),
    ("tuple-output", _TupleOut, lambda m: analyze(m, torch.rand(1, 6)), "one tensor of logits"),
    ("one-logit-with-labels", lambda: nn.Sequential(nn.Linear(6, 1)), lambda m: analyze(m, data=(torch.rand(4, 6), torch.zeros(4, dtype=torch.long))), "logits"),
    ("flat-normalize-wrong-features", lambda: create_model("fcn", input_shape=(3, 2, 1), width=4, mean=[0.1] * 3, std=[0.2] * 3),
     lambda m: analyze(m, torch.rand(1, 7)), "does not accept example_inputs"),
]


@pytest.mark.parametrize("make,call,match", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_analyze_refuses_models_it_cannot_measure(make, call, match):
    expect_refusal(Case("model", call, match), make())


@pytest.mark.parametrize("call", [_a(), lambda m: analyze(m)], ids=["with-example", "no-example"])
def test_analyze_refuses_a_meta_device_model_and_leaves_it_unchanged(call):
    # the harness's snapshot compares values, which meta tensors do not have: compare the rest
    model = _meta(_model())
    params = [(n, id(p), p.requires_grad, p.is_meta) for n, p in model.named_parameters()]
    modes = [(n, m.training) for n, m in model.named_modules()]
    with pytest.raises(RobustPruneError, match="meta device"):
        call(model)
    assert [(n, id(p), p.requires_grad, p.is_meta) for n, p in model.named_parameters()] == params
    assert [(n, m.training) for n, m in model.named_modules()] == modes


def test_analyze_refuses_a_non_module():
    expect_refusal(Case("not-a-module", lambda _m: analyze("model", X[:1]), "torch.nn.Module"), _model())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    eps=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(float("nan"))),
    samples=st.integers(max_value=0),
    delta=st.one_of(st.floats(max_value=-1e-12), st.floats(min_value=1.0 + 1e-9, exclude_min=True)),
)
def test_analyze_refuses_any_value_out_of_range(eps, samples, delta):
    model = _model()
    expect_refusal(Case("eps", _a(eps=eps)), model)
    expect_refusal(Case("max_samples", _a(max_samples=samples)), model)
    expect_refusal(Case("delta", _a(delta=delta)), model)


# --------------------------------------------------------------------------- metrics, layers


LAYER = nn.Linear(6, 4)

OTHER_CASES = [
    Case("gap-bound-unknown-head", lambda _m: metrics.gap_bound(0.1, 1.0, 1.0, head="svm"), "head must be"),
    Case("gap-bound-softmax-bad-norm", lambda _m: metrics.gap_bound(0.1, 1.0, 1.0, head="softmax", p="1"), "p must be"),
    Case("gap-bound-delta-str", lambda _m: metrics.gap_bound("0.1", 1.0, 1.0), "delta must be a number"),
    Case("k-for-eps-str", lambda _m: metrics.k_for_eps(torch.rand(5), "a"), "eps must be a number"),
    Case("row-norms-q-str", lambda _m: metrics.row_norms(LAYER, q="x"), "q must be a number"),
    Case("certified-delta-nan", lambda _m: metrics.certified_fraction(torch.rand(2, 3), torch.tensor([0, 1]), delta=float("nan"), lipschitz=1.0, head_norm=1.0), "finite budget"),
    Case("normalize-mean-str", lambda _m: Normalize("abc", [1.0]), "mean as a non-empty list"),
    Case("normalize-mean-empty", lambda _m: Normalize([], []), "mean as a non-empty list"),
    Case("normalize-std-nan", lambda _m: Normalize([0.5], [float("nan")]), "finite std"),
    Case("normalize-std-zero", lambda _m: Normalize([0.5], [0.0]), "positive std"),
    Case("normalize-lengths", lambda _m: Normalize([0.5, 0.5], [1.0]), "same length"),
    Case("normalize-3d-input", lambda _m: Normalize([0.1] * 3, [0.2] * 3)(torch.rand(2, 4, 3)), "takes inputs"),
    Case("normalize-flat-indivisible", lambda _m: Normalize([0.1] * 3, [0.2] * 3)(torch.rand(2, 7)), "takes inputs"),
    Case("lowrank-rank-str", lambda _m: LowRankLinear(4, 4, "a"), "rank must be a whole number"),
    Case("lowrank-rank-float", lambda _m: LowRankLinear(4, 4, 2.5), "rank must be a whole number"),
    Case("lowrank-rank-too-big", lambda _m: LowRankLinear(4, 4, 5), r"rank must be in \[1, 4\]"),
]


@pytest.mark.parametrize("case", OTHER_CASES, ids=repr)
def test_metrics_and_layers_refuse_bad_arguments(case):
    expect_refusal(case, _model())


# --------------------------------------------------------------------------- regularizers


REGULARIZER_CASES = [
    Case("weight-nan", lambda _m: BetaDispersion(float("nan")), "weight must be a finite number"),
    Case("weight-inf", lambda _m: GroupLasso(math.inf), "weight must be a finite number"),
    Case("weight-negative", lambda _m: NuclearNorm(-1.0), "weight must be a finite number"),
    Case("weight-str", lambda _m: Alignment("0.1"), "weight must be a finite number"),
    Case("weight-bool", lambda _m: GroupLasso(True), "weight must be a finite number"),
    Case("weight-none", lambda _m: GroupLasso(None), "weight must be a finite number"),
    Case("top-nan", lambda _m: BetaDispersion(0.1, top=float("nan")), "top must be a fraction"),
    Case("top-str", lambda _m: BetaDispersion(0.1, top="a"), "top must be a fraction"),
    Case("top-zero", lambda _m: BetaDispersion(0.1, top=0.0), "top must be a fraction"),
    Case("top-above-1", lambda _m: BetaDispersion(0.1, top=1.5), "top must be a fraction"),
    Case("power-iterations-zero", lambda _m: Alignment(0.1, n_power_iterations=0), "n_power_iterations"),
    Case("power-iterations-float", lambda _m: Alignment(0.1, n_power_iterations=2.5), "n_power_iterations"),
    Case("power-iterations-str", lambda _m: Alignment(0.1, n_power_iterations="a"), "n_power_iterations"),
    Case("layers-int", lambda _m: GroupLasso(0.1, layers=3), "layers must be a list"),
    Case("layers-int-inside", lambda _m: GroupLasso(0.1, layers=[3]), r"got 3 \(int\)"),
    Case("layers-none-inside", lambda _m: GroupLasso(0.1, layers=[None]), "got None"),
    Case("layers-empty", lambda _m: GroupLasso(0.1, layers=[]), "layers is empty"),
    Case("layers-missing-name-check", lambda m: GroupLasso(0.1, layers=["nope"]).check(m), "no layer named 'nope'"),
    Case("layers-missing-name-call", lambda m: GroupLasso(0.1, layers=["nope"])(m), "no layer named 'nope'"),
    Case("layers-foreign-module", lambda m: NuclearNorm(0.1, layers=[nn.Linear(3, 3)]).check(m), "not part of the model"),
    Case("layers-not-prunable", lambda m: GroupLasso(0.1, layers=["features.1"]).check(m), "BatchNorm2d"),
    Case("alignment-missing-name", lambda m: Alignment(0.1, layers=["nope"]).check(m), "no layer named 'nope'"),
    Case("called-with-a-non-module", lambda _m: GroupLasso(0.1)("model"), "nn.Module"),
]


@pytest.mark.parametrize("case", REGULARIZER_CASES, ids=repr)
def test_regularizers_refuse_bad_arguments_and_leave_the_model_unchanged(case):
    expect_refusal(case, _model())
