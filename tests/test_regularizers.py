"""Regularizers: formulas, layer selection, gradients, and that they do what they claim."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustprune import metrics
from robustprune.data import create_datasets
from robustprune.errors import InvalidArgumentError
from robustprune.models import create_model
from robustprune.regularizers import (
    Alignment,
    BetaDispersion,
    GroupLasso,
    NuclearNorm,
    ScaleInvariantRowSparsity,
    default_layers,
)

ALL = [BetaDispersion, Alignment, NuclearNorm, GroupLasso, ScaleInvariantRowSparsity]


@pytest.mark.parametrize("cls", ALL)
def test_each_regularizer_is_a_weighted_differentiable_scalar(cls):
    model = create_model("cnn-small", widths=(4, 8), convs_per_stage=2)
    value = cls(0.5)(model)
    assert value.ndim == 0 and value.requires_grad and torch.isfinite(value)
    assert float(cls(1.0)(model)) == pytest.approx(2 * float(value), rel=1e-5)
    assert float(cls(0.0)(model)) == 0.0
    value.backward()
    # the head and the first conv are excluded by default; the others get gradients
    assert model.head.weight.grad is None and model.features[0].weight.grad is None
    assert model.features[3].weight.grad is not None and model.features[3].weight.grad.abs().sum() > 0


def test_default_selection_keeps_a_first_linear_layer():
    fcn = create_model("fcn", width=8, depth=2)
    assert [n for n, _ in default_layers(fcn)] == ["features.1", "features.3"]


@pytest.mark.parametrize("cls", ALL)
def test_layers_override_selects_layers_by_name_or_module(cls):
    model = create_model("fcn", width=8, depth=3)
    cls(1.0, layers=["features.3", model.features[5]])(model).backward()
    assert model.features[1].weight.grad is None and model.head.weight.grad is None
    assert model.features[3].weight.grad is not None and model.features[5].weight.grad is not None
    with pytest.raises(InvalidArgumentError, match="no layer named 'nope'"):
        cls(1.0, layers=["nope"])(model)
    with pytest.raises(InvalidArgumentError, match="ReLU"):
        cls(1.0, layers=["features.2"])(model)


def test_bad_weights_and_fractions_are_refused():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="weight"):
            GroupLasso(bad)
    with pytest.raises(InvalidArgumentError, match="top"):
        BetaDispersion(1.0, top=0.0)
    with pytest.raises(InvalidArgumentError, match="weight must be a finite number"):
        BetaDispersion(10**400)  # beyond the float range: no OverflowError


@pytest.mark.parametrize("cls", ALL)
def test_a_layer_listed_twice_is_refused_not_counted_twice(cls):
    model = create_model("fcn", width=8)
    layer = model.get_submodule("features.1")
    for layers in (["features.1", "features.1"], ["features.1", layer]):
        with pytest.raises(InvalidArgumentError, match="listed twice in layers="):
            cls(1.0, layers=layers)(model)


@pytest.mark.parametrize("cls", ALL)
def test_non_finite_weights_give_a_nan_penalty_that_fit_stops_on(cls):
    """NaN in, NaN out (never a raw eigensolver error): fit's loss check then refuses the step."""
    model = create_model("fcn", width=8)
    with torch.no_grad():
        for name in ("features.1", "features.3"):
            model.get_submodule(name).weight.fill_(float("nan"))
    value = cls(1.0, layers=["features.1", "features.3"])(model)
    assert torch.isnan(value)


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_beta_dispersion_formula_scale_invariance_and_zero_for_equal_rows():
    rows = torch.tensor([[3.0, 4.0], [0.0, 4.0], [1.0, 0.0], [0.1, 0.1]])  # norms 5, 4, 1, 0.14
    layer = _linear(rows)
    reg = BetaDispersion(1.0, top=0.5, layers=[layer])
    t = torch.tensor([5.0, 4.0])
    expected = float(((t / t.mean() - 1) ** 2).mean())
    model = nn.Sequential(layer)
    assert float(reg(model)) == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        layer.weight.mul_(7.0)
    assert float(reg(model)) == pytest.approx(expected, rel=1e-5)
    equal = nn.Sequential(_linear(torch.tensor([[3.0, 4.0], [5.0, 0.0], [0.0, 1.0]])))
    assert float(BetaDispersion(1.0, top=0.5, layers=["0"])(equal)) == pytest.approx(0.0, abs=1e-12)


def test_group_lasso_and_row_sparsity_follow_their_formulas():
    w = torch.randn(6, 5)
    model = nn.Sequential(_linear(w))
    r = w.norm(dim=1)
    assert float(GroupLasso(2.0, layers=["0"])(model)) == pytest.approx(2 * float(r.sum()), rel=1e-5)
    sirs = ScaleInvariantRowSparsity(1.0, layers=["0"])
    assert float(sirs(model)) == pytest.approx(float(r.sum() / r.norm()), rel=1e-5)
    with torch.no_grad():
        model[0].weight.mul_(0.01)
    assert float(sirs(model)) == pytest.approx(float(r.sum() / r.norm()), rel=1e-5)


def test_nuclear_norm_matches_the_singular_values():
    model = create_model("cnn-small", widths=(4, 8))
    reg = NuclearNorm(1.0)
    expected = sum(
        float(torch.linalg.svdvals(m.weight.detach().double().reshape(m.weight.shape[0], -1)).sum())
        for _, m in default_layers(model)
    )
    assert float(reg(model)) == pytest.approx(expected, rel=1e-4)


def test_alignment_converges_to_the_exact_ratio_and_lies_in_unit_interval():
    model = create_model("fcn", width=16, depth=3)
    reg = Alignment(1.0)
    assert reg.pairs(model) == (("features.1", "features.3"), ("features.3", "features.5"))
    for _ in range(40):
        value = reg(model)
    expected = 0.0
    for a, b in reg.pairs(model):
        wa, wb = model.get_submodule(a).weight.double(), model.get_submodule(b).weight.double()
        ratio = torch.linalg.matrix_norm(wb @ wa, 2) / (torch.linalg.matrix_norm(wb, 2) * torch.linalg.matrix_norm(wa, 2))
        assert 0 < float(ratio) <= 1
        expected += float(ratio)
    assert float(value) == pytest.approx(expected, rel=1e-3)


def test_alignment_uses_channel_mixing_matrices_for_convs_and_survives_pruning():
    model = create_model("resnet18-cifar", width=4)
    reg = Alignment(1.0, n_power_iterations=30)
    pairs = reg.pairs(model)
    assert ("layer1.0.conv1", "layer1.0.conv2") in pairs and all("conv1" in a for a, _ in pairs)
    value = reg(model)
    wa = model.layer1[0].conv1.weight.sum(dim=(2, 3)).double()
    wb = model.layer1[0].conv2.weight.sum(dim=(2, 3)).double()
    first = torch.linalg.matrix_norm(wb @ wa, 2) / (torch.linalg.matrix_norm(wb, 2) * torch.linalg.matrix_norm(wa, 2))
    assert 0 < float(value) <= len(pairs) + 1e-6
    single = Alignment(1.0, layers=["layer1.0.conv1", "layer1.0.conv2"], n_power_iterations=30)
    assert float(single(model)) == pytest.approx(float(first), rel=1e-3)
    # remove two output channels of conv1 (and the inputs of conv2): new shapes, new vectors
    block = model.layer1[0]
    with torch.no_grad():
        block.conv1.weight = nn.Parameter(block.conv1.weight[:2].clone())
        block.conv2.weight = nn.Parameter(block.conv2.weight[:, :2].clone())
    assert torch.isfinite(single(model))


@pytest.mark.parametrize("cls", ALL)
def test_all_zero_layers_give_finite_values_and_gradients(cls):
    model = create_model("fcn", width=8, depth=3)
    with torch.no_grad():
        model.features[3].weight.zero_()  # e.g. a zero-initialized layer
    value = cls(1.0)(model)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if cls is BetaDispersion:
        only_zero = BetaDispersion(1.0, layers=["features.3"])(model)
        assert float(only_zero) == 0.0


@pytest.mark.parametrize("cls", ALL)
def test_regularizers_compute_in_full_precision_under_autocast(cls):
    model = create_model("cnn-small", widths=(4, 8))
    reference = float(cls(1.0)(model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = cls(1.0)(model)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(reference, rel=1e-3)


def test_regularizers_leave_the_global_rng_alone():
    model = create_model("fcn", width=8)
    state = torch.random.get_rng_state()
    for cls in ALL:
        cls(1.0)(model)
    assert torch.equal(state, torch.random.get_rng_state())


# --------------------------------------------------------------------------- they do what they claim


def _train_fcn(reg: nn.Module | None, steps: int = 300) -> nn.Module:
    """A 2-hidden-layer FCN on digits, plain Adam loop, fixed seed (same init for every reg)."""
    ds = create_datasets("digits")
    x, y = ds.train.tensors
    torch.manual_seed(0)
    model = create_model("fcn", width=64, depth=2, mean=ds.info.mean, std=ds.info.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if reg is not None:
            loss = loss + reg(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = ds.test.tensors
    with torch.no_grad():
        model.test_accuracy = float((model(xt).argmax(1) == yt).double().mean())
    return model


@pytest.fixture(scope="module")
def plain_fcn() -> nn.Module:
    return _train_fcn(None)


def test_nuclear_norm_training_makes_layers_spectrally_more_compressible(plain_fcn):
    nnr = _train_fcn(NuclearNorm(1e-2))
    for name in ("features.1", "features.3"):
        eps_plain = metrics.spectral_compressibility(plain_fcn.get_submodule(name), k=4).eps
        eps_nnr = metrics.spectral_compressibility(nnr.get_submodule(name), k=4).eps
        assert eps_nnr < eps_plain - 0.05
    assert nnr.test_accuracy > 0.85


def test_beta_dispersion_training_lowers_dispersion_without_changing_compressibility(plain_fcn):
    reg = BetaDispersion(1.0)
    beta_model = _train_fcn(reg)
    k = math.ceil(reg.top * 64)
    for name in ("features.1", "features.3"):
        rows_plain = plain_fcn.get_submodule(name).weight.detach().norm(dim=1)
        rows_beta = beta_model.get_submodule(name).weight.detach().norm(dim=1)
        assert metrics.dispersion(rows_beta, k) < 0.5 * metrics.dispersion(rows_plain, k)
        eps_plain = metrics.spectral_compressibility(plain_fcn.get_submodule(name), k=4).eps
        eps_beta = metrics.spectral_compressibility(beta_model.get_submodule(name), k=4).eps
        assert abs(eps_beta - eps_plain) < 0.05
    assert beta_model.test_accuracy > 0.9
