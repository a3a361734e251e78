"""Compressibility, dispersion, structure x scale identities, operator norms, alignment, bounds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustprune import metrics
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError, RobustPruneError
from robustprune.models import create_model

# non-negative vectors with at least one clearly positive entry
_vectors = st.lists(st.floats(0.0, 100.0, allow_nan=False, allow_subnormal=False), min_size=1, max_size=40).filter(
    lambda v: max(v) > 1e-3
)


def _dense_conv(conv: nn.Conv2d, shape: tuple[int, int, int]) -> torch.Tensor:
    """The conv (bias excluded) as a dense ``out x in`` matrix on inputs of ``shape``."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    with torch.no_grad():
        out = conv.double()._conv_forward(basis, conv.weight, None)
    conv.float()
    return out.flatten(1).T


# --------------------------------------------------------------------------- vectors


@settings(max_examples=60, deadline=None)
@given(_vectors, st.floats(1e-3, 1e3), st.sampled_from([1.0, 2.0, 3.0]))
def test_eps_k_and_beta_are_scale_invariant(values, scale, q):
    theta = torch.tensor(values, dtype=torch.float64)
    n = theta.numel()
    for k in {1, max(1, n // 2), n}:
        assert metrics.relative_residual(scale * theta, k, q) == pytest.approx(
            metrics.relative_residual(theta, k, q), abs=1e-9
        )
        assert metrics.dispersion(scale * theta, k, q) == pytest.approx(metrics.dispersion(theta, k, q), abs=1e-9)
    for eps in (0.01, 0.1, 0.5):
        assert metrics.k_for_eps(scale * theta, eps, q) == metrics.k_for_eps(theta, eps, q)


@settings(max_examples=60, deadline=None)
@given(_vectors, st.sampled_from([1.0, 2.0, 4.0]))
def test_dispersion_lies_in_its_range(values, q):
    theta = torch.tensor(values, dtype=torch.float64)
    for k in range(1, theta.numel() + 1):
        beta = metrics.dispersion(theta, k, q)
        assert -1e-12 <= beta <= 1 - k ** (-1 / q) + 1e-12


@pytest.mark.parametrize("q", [1.0, 2.0, math.inf])
def test_dispersion_is_zero_for_equal_top_entries(q):
    theta = torch.tensor([3.0, 3.0, 3.0, 1.0, 0.5])
    assert metrics.dispersion(theta, 3, q) == pytest.approx(0.0, abs=1e-12)
    assert metrics.dispersion(theta, 4, q if q != math.inf else 2.0) > 0


@settings(max_examples=80, deadline=None)
@given(_vectors, st.floats(0.001, 0.999), st.sampled_from([1.0, 2.0]))
def test_k_for_eps_is_the_minimum_k_meeting_eps(values, eps, q):
    theta = torch.tensor(values, dtype=torch.float64)
    k = metrics.k_for_eps(theta, eps, q)
    # brute force from the definition: ||theta - theta_k||_q / ||theta||_q
    s = torch.sort(theta, descending=True).values
    total = torch.linalg.vector_norm(s, ord=q)
    brute = [float(torch.linalg.vector_norm(s[j:], ord=q) / total) for j in range(1, s.numel() + 1)]
    brute[-1] = 0.0
    assert brute[k - 1] <= eps + 1e-9
    assert all(brute[j] > eps - 1e-9 for j in range(k - 1))


def test_compressibility_reports_achieved_eps_at_k():
    theta = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.1])
    c = metrics.compressibility(theta, eps=0.3)
    assert c.k == metrics.k_for_eps(theta, 0.3)
    assert c.eps == pytest.approx(metrics.relative_residual(theta, c.k))
    assert c.beta == pytest.approx(metrics.dispersion(theta, c.k))
    assert c.structure_factor == pytest.approx(metrics.structure_factor(theta, c.k))


# --------------------------------------------------------------------------- structure x scale


@pytest.mark.parametrize("shape", [(7, 5), (12, 30), (40, 9)])
def test_structure_scale_identity_holds_for_every_k(shape):
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g, dtype=torch.float64) * torch.logspace(0, -2, shape[1], dtype=torch.float64)
    sigma = torch.linalg.svdvals(w)
    op2, fro = float(torch.linalg.matrix_norm(w, 2)), float(torch.linalg.matrix_norm(w))
    for k in range(1, sigma.numel() + 1):
        eps, beta = metrics.relative_residual(sigma, k), metrics.dispersion(sigma, k)
        s = math.sqrt(1 - eps**2) / (math.sqrt(k) * (1 - beta))
        assert s * fro == pytest.approx(op2, rel=1e-5)
        assert metrics.structure_factor(sigma, k) * fro == pytest.approx(op2, rel=1e-5)
        assert metrics.spectral_compressibility(w, k=k).structure_factor * fro == pytest.approx(op2, rel=1e-5)


@pytest.mark.parametrize("shape", [(7, 5), (12, 30), (40, 9)])
def test_linf_structure_inequality_holds_for_every_k(shape):
    g = torch.Generator().manual_seed(1 + sum(shape))
    w = torch.randn(shape, generator=g, dtype=torch.float64) * torch.rand(shape[0], 1, generator=g, dtype=torch.float64)
    nu = w.abs().sum(dim=1)
    d, fro = shape[1], float(torch.linalg.matrix_norm(w))
    op_inf = metrics.operator_norm(w, "inf")
    assert op_inf == pytest.approx(float(nu.max()))
    for k in range(1, shape[0] + 1):
        c = metrics.neuron_compressibility(w, k=k)
        bound = math.sqrt(1 - c.eps**2) / (math.sqrt(k) * (1 - c.beta)) * math.sqrt(d) * fro
        assert op_inf <= bound * (1 + 1e-9)
        # the factor is exact on ||nu||_2
        assert c.structure_factor * float(torch.linalg.vector_norm(nu)) == pytest.approx(op_inf, rel=1e-9)


# --------------------------------------------------------------------------- operator norms


def test_linear_operator_norms_are_exact():
    layer = nn.Linear(13, 9)
    w = layer.weight.detach().double()
    assert metrics.operator_norm(layer, "2") == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-12)
    assert metrics.operator_norm(layer, "inf") == pytest.approx(float(w.abs().sum(1).max()), rel=1e-12)
    assert metrics.operator_norm(layer, "2", mode="operator") == metrics.operator_norm(layer, "2")


@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, dilation=2, padding=2),
        dict(in_channels=2, out_channels=3, kernel_size=(5, 3), padding=0),
        dict(in_channels=3, out_channels=2, kernel_size=3, padding=1, padding_mode="circular"),
    ],
)
def test_conv_l2_power_iteration_matches_the_dense_matrix(cfg):
    conv = nn.Conv2d(**cfg)
    shape = (cfg["in_channels"], 9, 8)
    exact = float(torch.linalg.matrix_norm(_dense_conv(conv, shape), 2))
    assert metrics.operator_norm(conv, "2", shape, mode="operator") == pytest.approx(exact, rel=1e-3)
    # the matricized sigma_max times the overlap factor is a valid bound
    assert metrics.operator_norm(conv, "2") * metrics.conv_norm_bound_factor(conv) >= exact * (1 - 1e-6)


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2), (4, 1)])
def test_conv_linf_closed_form_matches_the_dense_matrix_without_borders(groups, stride):
    conv = nn.Conv2d(4, 8, 3, stride=stride, padding=0, groups=groups)  # no border rows
    dense = _dense_conv(conv, (4, 10, 10))
    expected = float(dense.abs().sum(dim=1).max())
    assert metrics.operator_norm(conv, "inf", (4, 10, 10), mode="operator") == pytest.approx(expected, rel=1e-6)
    assert metrics.operator_norm(conv, "inf") == pytest.approx(expected, rel=1e-6)


def test_matricized_norm_is_labelled_and_differs_from_operator_norm():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    mat = metrics.operator_norm(conv, "2")
    assert mat == pytest.approx(float(torch.linalg.matrix_norm(conv.weight.detach().reshape(4, -1).double(), 2)))
    assert metrics.operator_norm(conv, "2", (3, 8, 8), mode="operator") != pytest.approx(mat, rel=1e-2)


def test_power_iteration_is_deterministic_and_leaves_the_global_rng_alone():
    conv = nn.Conv2d(3, 6, 3, padding=1)
    state = torch.random.get_rng_state()
    a = metrics.operator_norm(conv, "2", (3, 8, 8), mode="operator")
    b = metrics.operator_norm(conv, "2", (3, 8, 8), mode="operator")
    assert a == b
    assert torch.equal(state, torch.random.get_rng_state())


# --------------------------------------------------------------------------- alignment


def test_alignment_is_in_unit_interval():
    a, b = nn.Linear(20, 30), nn.Linear(30, 10)
    x = torch.randn(64, 20)
    for p in ("2", "inf"):
        for mode in ("data", "identity"):
            value = metrics.alignment(a, b, p, mode, x if mode == "data" else None)
            assert 0 < value <= 1
    ca, cb = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
    xc = torch.randn(8, 3, 8, 8)
    assert 0 < metrics.alignment(ca, cb, "2", "data", xc) <= 1
    assert 0 < metrics.alignment(ca, cb, "2", "identity", input_shape=(3, 8, 8)) <= 1
    head = nn.Linear(6 * 4 * 4, 3)
    through = nn.Sequential(nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
    assert 0 < metrics.alignment(ca, head, "2", "data", xc, through=through) <= 1


def test_linear_alignment_is_the_max_over_observed_masks():
    a, b = nn.Linear(6, 8), nn.Linear(8, 4)
    x = torch.randn(20, 6)
    wa, wb = a.weight.detach().double(), b.weight.detach().double()
    masks = (a(x) > 0).double()
    for p, ord_ in (("2", 2), ("inf", math.inf)):
        best = max(float(torch.linalg.matrix_norm(wb @ torch.diag(m) @ wa, ord_)) for m in masks)
        den = float(torch.linalg.matrix_norm(wb, ord_) * torch.linalg.matrix_norm(wa, ord_))
        assert metrics.alignment(a, b, p, "data", x) == pytest.approx(best / den, rel=1e-9)
        ident = float(torch.linalg.matrix_norm(wb @ wa, ord_)) / den
        assert metrics.alignment(a, b, p, "identity") == pytest.approx(ident, rel=1e-9)


def test_conv_alignment_matches_the_dense_masked_composite():
    ca, cb = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(5, 2, 6, 6)
    da, db = _dense_conv(ca, (2, 6, 6)), _dense_conv(cb, (3, 6, 6))
    masks = (ca(x) > 0).flatten(1).double()
    best = max(float(torch.linalg.matrix_norm(db @ torch.diag(m) @ da, 2)) for m in masks)
    den = float(torch.linalg.matrix_norm(db, 2) * torch.linalg.matrix_norm(da, 2))
    assert metrics.alignment(ca, cb, "2", "data", x) == pytest.approx(best / den, rel=2e-3)


def test_conv_linf_alignment_says_it_is_not_computed():
    ca, cb = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
    with pytest.raises(ModelNotSupportedError, match="l-infinity"):
        metrics.alignment(ca, cb, "inf", "data", torch.randn(2, 2, 6, 6))


# --------------------------------------------------------------------------- bounds


def _two_layer_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5))


def test_aligned_bound_is_not_above_the_naive_bound():
    torch.manual_seed(1)
    layers = [nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 4)]
    x = torch.randn(64, 12)
    for p in ("2", "inf"):
        norms = [metrics.operator_norm(m, p) for m in layers]
        aligned_values, h = [], x
        for i in range(len(layers) - 1):
            aligned_values.append(metrics.alignment(layers[i], layers[i + 1], p, "data", h))
            h = torch.relu(layers[i](h)).detach()
        aligned = metrics.aligned_lipschitz_bound(norms, aligned_values)
        assert 0 < aligned <= metrics.naive_lipschitz_bound(norms) * (1 + 1e-12)


def test_naive_bound_dominates_input_gradients_of_a_two_layer_relu_net():
    net = _two_layer_net()
    points = torch.randn(1000, 10, generator=torch.Generator().manual_seed(0)) * 3
    jac = torch.func.vmap(torch.func.jacrev(net))(points)  # (1000, 5, 10)
    for p, ord_ in (("2", 2), ("inf", math.inf)):
        naive = metrics.naive_lipschitz_bound([metrics.operator_norm(net[0], p), metrics.operator_norm(net[2], p)])
        largest = float(torch.linalg.matrix_norm(jac.double(), ord_).max())
        assert largest <= naive * (1 + 1e-6)
        # and for every scalar output, the input-gradient norm (dual norm for l-infinity)
        grads = jac.double().abs().sum(dim=2) if p == "inf" else torch.linalg.vector_norm(jac.double(), dim=2)
        assert float(grads.max()) <= naive * (1 + 1e-6)


def test_gap_bound_and_certified_fraction_follow_their_formulas():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.2], [1.0, 0.0, 0.9]])
    labels = torch.tensor([0, 1, 0])
    margins = metrics.logit_margins(logits, labels)
    assert torch.allclose(margins, torch.tensor([2.0, 0.3, 0.1], dtype=torch.float64))
    assert metrics.gap_bound(0.1, 2.0, 3.0) == pytest.approx(0.6)
    # certified iff margin > 2 * delta * L * ||C||
    assert metrics.certified_fraction(logits, labels, delta=0.1, lipschitz=1.0, head_norm=1.0) == pytest.approx(2 / 3)
    assert metrics.certified_fraction(logits, labels, delta=0.1, lipschitz=2.0, head_norm=1.0) == pytest.approx(1 / 3)
    assert metrics.certified_fraction(logits, labels, delta=0.01, lipschitz=1.0, head_norm=1.0) == pytest.approx(1.0)
    assert metrics.certified_fraction(logits, labels, delta=2.0, lipschitz=1.0, head_norm=1.0) == 0.0


# --------------------------------------------------------------------------- audit


def test_audit_direction_is_the_top_right_singular_vector_of_the_first_layer():
    model = create_model("fcn", width=16, mean=[0.4], std=[0.5])
    v, sigma = metrics.top_input_direction(model, (1, 8, 8))
    w = model.features[1].weight.detach().double() / 0.5  # normalization folded
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-4)
    assert float(torch.linalg.vector_norm(w @ v.flatten().double())) == pytest.approx(sigma, rel=1e-4)


def test_audit_accuracy_at_zero_budget_is_clean_accuracy():
    model = create_model("cnn-small", widths=(4, 8), convs_per_stage=1)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    result = metrics.dominant_direction_audit(model, x, y, delta=0.0, p="inf")
    assert result.accuracy == result.clean_accuracy == result.random_accuracy
    assert model.training  # mode restored


def test_a_dominant_first_layer_direction_fails_the_audit_before_a_random_one():
    # a linear classifier whose first layer has one huge singular direction feeding class 0
    torch.manual_seed(0)
    first = nn.Linear(64, 16)
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(first.weight)
        first.weight.copy_(first.weight + 50 * torch.outer(u[:, 0], vh[0]))
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(200, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model is right on clean inputs
    result = metrics.dominant_direction_audit(model, x, y, delta=0.05, p="inf")
    assert result.clean_accuracy == 1.0
    assert result.accuracy < result.random_accuracy


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 1.5])
def test_eps_outside_open_unit_interval_is_refused(eps):
    with pytest.raises(InvalidArgumentError, match="eps"):
        metrics.k_for_eps(torch.rand(5), eps)
    with pytest.raises(InvalidArgumentError, match="eps"):
        metrics.spectral_compressibility(nn.Linear(4, 4), eps=eps)


@pytest.mark.parametrize("k", [0, 6, -1])
def test_k_outside_range_is_refused(k):
    with pytest.raises(InvalidArgumentError, match=r"k must be in \[1, 5\]"):
        metrics.relative_residual(torch.rand(5) + 0.1, k)
    with pytest.raises(InvalidArgumentError, match="k must be"):
        metrics.dispersion(torch.rand(5) + 0.1, k)


def test_empty_and_non_finite_weights_are_refused():
    with pytest.raises(InvalidArgumentError, match="empty"):
        metrics.operator_norm(nn.Linear(0, 3), "2")
    bad = nn.Linear(4, 3)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    for fn in (lambda: metrics.operator_norm(bad, "inf"), lambda: metrics.neuron_compressibility(bad, k=1)):
        with pytest.raises(InvalidArgumentError, match="non-finite"):
            fn()
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        metrics.k_for_eps(torch.tensor([]), 0.1)


@pytest.mark.parametrize("spelling,name", [(2, "2"), ("l2", "2"), ("L2", "2"), ("inf", "inf"),
                                           ("Linf", "inf"), (math.inf, "inf"), ("∞", "inf")])
def test_norm_names_are_normalized(spelling, name):
    assert metrics.check_norm(spelling) == name


def test_other_bad_arguments_raise_robustprune_errors():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(InvalidArgumentError, match="input_shape"):
        metrics.operator_norm(conv, "2", mode="operator")
    with pytest.raises(InvalidArgumentError, match="channels"):
        metrics.operator_norm(conv, "2", (2, 8, 8), mode="operator")
    with pytest.raises(InvalidArgumentError, match="'2' or 'inf'"):
        metrics.operator_norm(conv, "1")
    with pytest.raises(InvalidArgumentError, match="data="):
        metrics.alignment(nn.Linear(3, 3), nn.Linear(3, 3), "2", "data")
    with pytest.raises(RobustPruneError):
        metrics.alignment(nn.Linear(3, 4), nn.Linear(5, 3), "2", "identity")
    with pytest.raises(ModelNotSupportedError):
        metrics.operator_norm(nn.ReLU(), "2")
