"""fit: trains, finetunes adversarially, checkpoints, resumes bit-for-bit, fails loudly."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from robustprune.attacks import AdversarialConfig, robust_accuracy
from robustprune.errors import InvalidArgumentError, TrainingDivergedError
from robustprune.models import create_model
from robustprune.train import CHECKPOINT_NAME, FitResult, fit

REPO = Path(__file__).resolve().parents[1]


def _fcn(digits, width: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("fcn", width=width, mean=digits.info.mean, std=digits.info.std)


@pytest.fixture(scope="module")
def pretrained(digits):
    model = _fcn(digits, width=64)
    fit(model, digits, 6, lr=0.05, progress=False)
    return model


def test_standard_training_learns_digits_and_reports_history(digits):
    model = _fcn(digits)
    result = fit(model, digits, 4, lr=0.05, progress=False)
    assert isinstance(result, FitResult)
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert result.history[-1].loss < result.history[0].loss
    assert result.final_test_accuracy > 0.85
    assert result.final_train_accuracy == result.history[-1].train_accuracy
    assert result.amp == "off" and result.device == "cpu" and result.world_size == 1
    assert result.to_dict()["history"][0]["epoch"] == 1


def test_fit_restores_caller_rng_and_model_mode(digits):
    model = _fcn(digits).eval()
    state = torch.get_rng_state()
    fit(model, digits.train, 1, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training


def test_fit_is_deterministic_given_seed(digits):
    a, b = _fcn(digits), _fcn(digits)
    adv = AdversarialConfig(kind="pgd", eps=0.1, steps=2)
    fit(a, (copy.deepcopy(digits.train), None), 1, adversarial=adv, seed=3, progress=False)
    fit(b, (copy.deepcopy(digits.train), None), 1, adversarial=adv, seed=3, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_adversarial_finetune_improves_apgd_accuracy_over_standard_finetune(digits, pretrained):
    eps = 0.1
    standard, adversarial = copy.deepcopy(pretrained), copy.deepcopy(pretrained)
    fit(standard, digits, 4, lr=0.02, progress=False)
    fit(adversarial, digits, 4, lr=0.02, progress=False,
        adversarial=AdversarialConfig(kind="pgd", eps=eps, steps=5))
    kw = dict(eps=eps, attacks=("apgd-ce",), n_iter=20, n_examples=200, progress=False)
    robust_std = robust_accuracy(standard, digits.test, **kw)
    robust_adv = robust_accuracy(adversarial, digits.test, **kw)
    assert robust_adv.robust_accuracy > robust_std.robust_accuracy + 0.15
    assert robust_adv.clean_accuracy > 0.8


@pytest.mark.parametrize("kind", ["fgsm", "trades"])
def test_fgsm_and_trades_training_run_and_keep_accuracy(digits, pretrained, kind):
    model = copy.deepcopy(pretrained)
    result = fit(model, digits, 1, lr=0.01, progress=False,
                 adversarial={"kind": kind, "eps": 0.1, "steps": 3})
    assert result.adversarial.kind == kind
    assert result.final_test_accuracy > 0.8


def test_regularizers_enter_the_loss(digits):
    class L2(nn.Module):
        def forward(self, model: nn.Module) -> torch.Tensor:
            return 0.01 * sum(p.pow(2).sum() for p in model.parameters())

    plain, reg = _fcn(digits), _fcn(digits)
    fit(plain, digits.train, 2, progress=False, weight_decay=0.0)
    result = fit(reg, digits.train, 2, progress=False, weight_decay=0.0, regularizers=[L2()])
    assert result.history[-1].regularization > 0
    norm = lambda m: sum(float(p.pow(2).sum()) for p in m.parameters())  # noqa: E731
    assert norm(reg) < norm(plain)


def test_optimizer_is_rebuilt_from_current_parameters_after_pruning(digits):
    import torch_pruning as tp

    model = _fcn(digits)
    fit(model, digits.train, 1, progress=False)
    layer = model.features[1]
    example = torch.rand(1, 1, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    group = graph.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=list(range(8)))
    group.prune()
    assert layer.out_features == 24
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, digits.train, 1, progress=False)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(digits, tmp_path):
    class NaNAfter(nn.Module):
        def __init__(self, steps: int) -> None:
            super().__init__()
            self.steps, self.calls = steps, 0

        def forward(self, model: nn.Module) -> torch.Tensor:
            self.calls += 1
            return torch.tensor(float("nan") if self.calls > self.steps else 0.0)

    model = _fcn(digits)
    steps_per_epoch = len(digits.train)
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        fit(model, digits.train, 3, checkpoint_dir=tmp_path, progress=False,
            regularizers=[NaNAfter(steps_per_epoch + 3)])
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved["model"][name])
        assert torch.isfinite(value).all()


def test_resume_with_different_arguments_is_refused(digits, tmp_path):
    fit(_fcn(digits), digits.train, 1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(InvalidArgumentError, match="different arguments"):
        fit(_fcn(digits), digits.train, 1, lr=0.1, checkpoint_dir=tmp_path, progress=False)


def test_finished_run_is_not_trained_again(digits, tmp_path):
    model = _fcn(digits)
    first = fit(model, digits.train, 2, checkpoint_dir=tmp_path, progress=False)
    again = _fcn(digits, seed=5)
    second = fit(again, digits.train, 2, checkpoint_dir=tmp_path, progress=False)
    assert second.resumed_from_epoch == 2 and second.history == first.history
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": -1}, {"optimizer": "nope"}, {"scheduler": "nope"}, {"amp": "fp8"},
     {"lr": 0.0}, {"adversarial": {"kind": "pgd"}}, {"regularizers": [3]}],
)
def test_bad_fit_arguments_raise_clear_errors(digits, kwargs):
    kwargs = {"epochs": 1, **kwargs}
    with pytest.raises(InvalidArgumentError):
        fit(_fcn(digits), digits.train, progress=False, **kwargs)


# --------------------------------------------------------------------------- kill and resume

_RESUME_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    from robustprune.data import create_loaders
    from robustprune.attacks import AdversarialConfig
    from robustprune.train import fit

    ckpt, kill_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    class KillAt(nn.Module):
        '''A zero regularizer that kills the process hard at update ``step`` (mid-epoch).'''
        def __init__(self, step):
            super().__init__()
            self.step, self.calls = step, 0
        def forward(self, model):
            self.calls += 1
            if self.calls == self.step:
                os._exit(17)
            return torch.zeros(())

    loaders = create_loaders("digits", batch_size=128, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(32, 10),
    )
    fit(model, loaders, 4, lr=0.05, adversarial=AdversarialConfig(kind="pgd", eps=0.1, steps=2),
        checkpoint_dir=None if ckpt == "-" else ckpt, regularizers=[KillAt(kill_at)],
        progress=False)
    torch.save(model.state_dict(), out)
    """
)


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_RESUME_SCRIPT)
    ckpt = tmp_path / "ckpt"
    # 12 updates per epoch: kill in the middle of epoch 3, after the epoch-2 checkpoint
    killed = _run(script, str(ckpt), "30", str(tmp_path / "never.pt"))
    assert killed.returncode == 17, killed.stderr
    assert torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    resumed = _run(script, str(ckpt), "0", str(tmp_path / "resumed.pt"))
    assert resumed.returncode == 0, resumed.stderr
    straight = _run(script, "-", "0", str(tmp_path / "straight.pt"))
    assert straight.returncode == 0, straight.stderr
    a = torch.load(tmp_path / "resumed.pt", weights_only=True)
    b = torch.load(tmp_path / "straight.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)["epoch"] == 4
    assert not list(ckpt.glob(".*.tmp"))
