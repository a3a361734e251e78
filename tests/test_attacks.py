"""Attacks: training attacks stay in budget and raise the loss; the AutoAttack adapter
reports numbers that behave like robust accuracies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustprune.attacks import AdversarialConfig, fgsm_rs, pgd, trades_attack, trades_loss
from robustprune.errors import InvalidArgumentError


def _mlp(seed: int = 0, d: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 10))


def _batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5)])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_raises_loss_within_budget_and_unit_box(norm, eps, random_start):
    model = _mlp()
    x, y = _batch()
    x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=10, random_start=random_start)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert torch.all(size <= eps + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert _loss(model, x_adv, y) > _loss(model, x, y) + 0.05
    assert not x_adv.requires_grad


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fgsm_rs_and_trades_attack_stay_within_budget(norm):
    model = _mlp()
    x, y = _batch()
    eps = 0.1 if norm == "Linf" else 0.5
    for x_adv in (fgsm_rs(model, x, y, eps=eps, norm=norm), trades_attack(model, x, eps=eps, norm=norm)):
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
        assert torch.all(size <= eps + 1e-5)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert _loss(model, fgsm_rs(model, x, y, eps=eps, norm=norm), y) > _loss(model, x, y)


def test_pgd_keeps_model_mode_global_rng_and_parameter_grads():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    x, y = _batch()
    for mode in (True, False):
        model.train(mode)
        state = torch.get_rng_state()
        pgd(model, x, y, eps=0.1, steps=3)
        trades_loss(model, x, y, eps=0.1, steps=2)
        assert model.training is mode
        assert torch.equal(torch.get_rng_state(), state)
        assert all(p.grad is None for p in model.parameters())


def test_pgd_is_deterministic_given_seed_and_zero_eps_is_identity():
    model = _mlp()
    x, y = _batch()
    assert torch.equal(pgd(model, x, y, eps=0.1, seed=3), pgd(model, x, y, eps=0.1, seed=3))
    assert torch.equal(pgd(model, x, y, eps=0.0), x)


def test_trades_loss_is_ce_plus_beta_kl_and_differentiable():
    model = _mlp()
    x, y = _batch()
    loss0, logits = trades_loss(model, x, y, eps=0.1, beta=0.0)
    assert torch.allclose(loss0, F.cross_entropy(logits, y))
    loss6, _ = trades_loss(model, x, y, eps=0.1, beta=6.0)
    assert loss6 > loss0
    loss6.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{"eps": -0.1}, {"eps": 0.1, "norm": "L1"}, {"eps": 0.1, "steps": -1}, {"eps": float("nan")}],
)
def test_bad_attack_arguments_raise_clear_errors(kwargs):
    model = _mlp()
    x, y = _batch()
    with pytest.raises(InvalidArgumentError):
        pgd(model, x, y, **kwargs)
    with pytest.raises(InvalidArgumentError):
        AdversarialConfig(**kwargs)


def test_adversarial_config_rejects_unknown_kind():
    with pytest.raises(InvalidArgumentError, match="pgd"):
        AdversarialConfig(kind="cw", eps=0.1)


# --------------------------------------------------------------------------- AutoAttack adapter

from robustprune.attacks import STANDARD_ATTACKS, RobustResult, rebatch, robust_accuracy  # noqa: E402
from robustprune.errors import ModelNotSupportedError  # noqa: E402


@pytest.fixture(scope="module")
def trained(digits):
    """A small FCN trained on digits to ~95% test accuracy, and the test tensors."""
    from robustprune.models import create_model
    from robustprune.train import fit

    torch.manual_seed(0)
    model = create_model("fcn", width=64, mean=digits.info.mean, std=digits.info.std)
    fit(model, digits, 8, lr=0.05, progress=False)
    x, y = next(iter(rebatch(digits.test, 10_000, None)))
    return model.eval(), x, y


def _ra(model, data, **kw) -> RobustResult:
    kw.setdefault("progress", False)
    return robust_accuracy(model, data, **kw)


def test_robust_accuracy_falls_as_eps_grows_and_vanishes_at_huge_eps(trained):
    model, x, y = trained
    data = (x[:160], y[:160])
    accs = [_ra(model, data, eps=eps, attacks=("apgd-ce",), n_iter=20).robust_accuracy
            for eps in (0.0, 0.05, 0.15, 0.5)]
    clean = _ra(model, data, eps=0.0, attacks=("apgd-ce",), n_iter=5).clean_accuracy
    assert clean > 0.9
    assert accs[0] == pytest.approx(clean)
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert accs[1] < clean and accs[2] < accs[1]
    assert accs[3] <= 0.02


def test_constant_output_model_has_equal_clean_and_robust_accuracy():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.0, 2.0, 1.0, 0.5, -1.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(x.shape[0], -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4, generator=g), torch.randint(0, 5, (40,), generator=g)
    result = _ra(Constant(), (x, y), eps=0.5, attacks=("apgd-ce", "apgd-t"), n_iter=10)
    assert result.clean_accuracy == pytest.approx(float((y == 1).float().mean()))
    assert result.robust_accuracy == result.clean_accuracy
    assert result.per_attack == {"apgd-ce": result.clean_accuracy, "apgd-t": result.clean_accuracy}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_accuracy_never_exceeds_clean_and_per_attack_is_cumulative(seed):
    model = _mlp(seed)
    x, y = _batch(48, seed)
    # make the random model right on some points: relabel by its own prediction for half
    with torch.no_grad():
        y[:24] = model(x[:24]).argmax(1)
    result = _ra(model, (x, y), eps=0.05, attacks=("apgd-ce", "apgd-dlr", "apgd-t"), n_iter=10)
    steps = list(result.per_attack.values())
    assert result.robust_accuracy <= steps[0] <= result.clean_accuracy
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    assert steps[-1] == result.robust_accuracy
    assert result.n == 48 and result.attacks == ("apgd-ce", "apgd-dlr", "apgd-t")


def test_robust_accuracy_does_not_depend_on_loader_batching(trained, digits):
    model, x, y = trained
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=17, shuffle=False)
    kw = dict(eps=0.08, attacks=("apgd-ce",), n_iter=10, n_examples=100, batch_size=40)
    a = _ra(model, loader, **kw)
    b = _ra(model, (x, y), **kw)
    assert a.to_dict() == b.to_dict()
    assert a.n == 100


def test_robust_accuracy_restores_mode_rng_and_is_reproducible(trained):
    model, x, y = trained
    model.train()
    state = torch.get_rng_state()
    a = _ra(model, (x[:64], y[:64]), eps=0.08, attacks=("apgd-ce",), n_iter=10)
    assert model.training
    assert torch.equal(torch.get_rng_state(), state)
    model.eval()
    b = _ra(model, (x[:64], y[:64]), eps=0.08, attacks=("apgd-ce",), n_iter=10)
    assert a == b


def test_standard_ensemble_runs_all_four_attacks(trained):
    model, x, y = trained
    result = _ra(model, (x[:24], y[:24]), eps=0.3, attacks="standard", n_iter=10)
    assert result.attacks == STANDARD_ATTACKS and result.version == "standard"
    assert set(result.per_attack) == set(STANDARD_ATTACKS)
    assert result.to_dict()["attacks"] == list(STANDARD_ATTACKS)


def test_rebatch_cuts_exact_batches_and_stops_at_n_examples():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.arange(23.0).view(23, 1), torch.arange(23)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    sizes = [b[0].shape[0] for b in rebatch(loader, 5, 21)]
    assert sizes == [5, 5, 5, 5, 1]
    got = torch.cat([b[1] for b in rebatch(loader, 5, 21)])
    assert torch.equal(got, torch.arange(21))


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"eps": 0.1, "attacks": ("pgd",)}, InvalidArgumentError),
        ({"eps": 0.1, "attacks": ("apgd-ce", "apgd-ce")}, InvalidArgumentError),
        ({"eps": -1.0}, InvalidArgumentError),
        ({"eps": 0.1, "norm": "L1"}, InvalidArgumentError),
        ({"eps": 0.1, "batch_size": 0}, InvalidArgumentError),
    ],
)
def test_bad_robust_accuracy_arguments_raise_clear_errors(kwargs, error):
    x, y = _batch(8)
    with pytest.raises(error):
        _ra(_mlp(), (x, y), **kwargs)


def test_targeted_attacks_on_three_classes_and_half_precision_models_are_refused():
    x, y = _batch(8)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(InvalidArgumentError, match="4 classes"):
        _ra(three, (x, y % 3), eps=0.1, attacks=("apgd-t",))
    with pytest.raises(InvalidArgumentError, match="fp32"):
        _ra(_mlp().to(torch.bfloat16), (x, y), eps=0.1)
    with pytest.raises(ModelNotSupportedError):
        _ra(nn.Flatten(0), (x, y), eps=0.1)


def test_interrupted_evaluation_resumes_from_its_state_file(trained, tmp_path, monkeypatch):
    import json

    from robustprune.attacks import _ensemble

    model, x, y = trained
    kw = dict(eps=0.08, attacks=("apgd-ce",), n_iter=10, batch_size=32, n_examples=128)
    state = tmp_path / "eval.json"
    full = _ra(model, (x, y), state_path=state, **kw)
    saved = json.loads(state.read_text())
    assert sorted(saved["done"]) == ["0", "1", "2", "3"]
    # an evaluation killed after two batches: the other two are recomputed on resume
    saved["done"] = {k: v for k, v in saved["done"].items() if k in ("0", "2")}
    state.write_text(json.dumps(saved))
    calls = []
    original = _ensemble.Ensemble.run
    monkeypatch.setattr(_ensemble.Ensemble, "run", lambda self, *a: calls.append(1) or original(self, *a))
    assert _ra(model, (x, y), state_path=state, **kw) == full
    assert len(calls) == 2
    assert _ra(model, (x, y), state_path=state, **kw) == full and len(calls) == 2
    with pytest.raises(InvalidArgumentError, match="other settings"):
        _ra(model, (x, y), state_path=state, **{**kw, "eps": 0.1})
