"""Property tests of the analysis on random models (issue 12, "Soundness of the analysis").

On random MLPs and small conv nets with BatchNorm (random running statistics) and a
per-channel :class:`~robustprune.layers.Normalize`, fed images ``(N, C, H, W)`` or flat
inputs ``(N, C*H*W)``:

- the naive Lipschitz bound of the encoder is >= the largest local Lipschitz constant found
  from 1,000 random start points (exact Jacobian norms, then a few steps of gradient ascent
  on the difference quotient, then the Jacobians again at the points reached);
- the folded copy computes the model's function;
- points certified at a budget delta survive a 50-step PGD of that budget, and the loss
  gap PGD finds stays below the reported gap bound.

Each model is small and every batch of 1,000 points is one tensor, so the file runs in a few
seconds per example on one CPU thread.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from robustprune.analysis import analyze
from robustprune.layers import Normalize, fold_for_analysis
from robustprune.metrics import logit_margins

N_POINTS = 1000
ASCENT_STEPS = 8
PGD_STEPS = 50
KINDS = ("mlp-flat", "mlp-image", "conv")

SETTINGS = settings(max_examples=6, deadline=None, derandomize=True)


def _randomize_bn(model: nn.Module, g: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            m.running_var.copy_(0.3 + 1.7 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def _random_model(kind: str, channels: int, padding: int, seed: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    """``(model, input shape without the batch)``: a chain whose first module is a
    per-channel Normalize and whose last is the Linear head (3 classes), in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    side, k = 6, 3
    mean = (0.2 + 0.6 * torch.rand(channels, generator=g)).tolist()
    std = (0.15 + 0.5 * torch.rand(channels, generator=g)).tolist()
    d = channels * side * side
    if kind == "mlp-flat":
        body = [nn.Linear(d, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU()]
        shape: tuple[int, ...] = (d,)
        width = 8
    elif kind == "mlp-image":
        body = [nn.Flatten(), nn.Linear(d, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU()]
        shape, width = (channels, side, side), 8
    else:
        # the first conv padded (the fold keeps its padding) or not (the shift goes into its bias)
        out_side = (side + 2 * padding - 2) // 2
        body = [
            nn.Conv2d(channels, 4, 3, padding=padding), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
        ]
        shape, width = (channels, side, side), 3 * out_side * out_side
    model = nn.Sequential(Normalize(mean, std), *body, nn.Linear(width, k))
    _randomize_bn(model, g)
    return model.eval(), shape


def _jacobians(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, m, d)``: the encoder's Jacobian at every point (samples are independent in eval mode)."""
    x = x.detach().clone().requires_grad_(True)
    out = encoder(x).flatten(1)
    rows = [torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0].flatten(1) for j in range(out.shape[1])]
    return torch.stack(rows, dim=1)


def _operator_norms(jac: torch.Tensor, p: str) -> torch.Tensor:
    """``||J||_(p->p)`` of each Jacobian: the largest singular value, or the largest row l1 norm."""
    if p == "2":
        return torch.linalg.matrix_norm(jac.double(), ord=2)
    return jac.double().abs().sum(dim=2).amax(dim=1)


def _norm(v: torch.Tensor, p: str) -> torch.Tensor:
    flat = v.flatten(1)
    return flat.norm(dim=1) if p == "2" else flat.abs().amax(dim=1)


def _largest_local_lipschitz(encoder: nn.Module, shape: tuple[int, ...], p: str, seed: int) -> float:
    """A lower bound on ``L_p(encoder)``: exact Jacobian norms at 1,000 random points, then
    gradient ascent on ``||f(x + v) - f(x)||_p / ||v||_p`` (x and v together), then the
    Jacobian norms at the points reached."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N_POINTS, *shape, generator=g)
    best = float(_operator_norms(_jacobians(encoder, x), p).max())
    v = 0.05 * (torch.rand(N_POINTS, *shape, generator=g) - 0.5)
    for _ in range(ASCENT_STEPS):
        x.requires_grad_(True)
        v.requires_grad_(True)
        ratio = _norm(encoder(x + v) - encoder(x), p) / _norm(v, p).clamp_min(1e-12)
        best = max(best, float(ratio.max()))
        gx, gv = torch.autograd.grad(ratio.sum(), (x, v))
        with torch.no_grad():
            x = (x + 0.05 * gx.sign()).clamp(0, 1)
            v = (v + 0.01 * gv.sign()).clamp(-0.1, 0.1)
    return max(best, float(_operator_norms(_jacobians(encoder, x.detach()), p).max()))


MODELS = st.tuples(st.sampled_from(KINDS), st.integers(1, 3), st.integers(0, 1), st.integers(0, 10_000))


@SETTINGS
@given(spec=MODELS)
@example(spec=("conv", 3, 1, 0))
@example(spec=("conv", 2, 0, 1))
@example(spec=("mlp-flat", 3, 0, 2))
@example(spec=("mlp-image", 2, 0, 3))
def test_naive_bound_is_at_least_the_largest_input_gradient_norm(spec):
    kind, channels, padding, seed = spec
    model, shape = _random_model(kind, channels, padding, seed)
    report = analyze(model, example_inputs=torch.rand(2, *shape))
    encoder = model[:-1]
    for p in ("2", "inf"):
        naive = report.bounds[p].naive
        assert naive is not None
        found = _largest_local_lipschitz(encoder, shape, p, seed)
        assert found <= naive * (1 + 1e-5), (kind, p, found, naive)


@SETTINGS
@given(spec=MODELS)
@example(spec=("conv", 3, 1, 0))
@example(spec=("conv", 2, 0, 1))
@example(spec=("mlp-flat", 3, 0, 2))
@example(spec=("mlp-image", 2, 0, 3))
def test_the_folded_copy_computes_the_models_function(spec):
    kind, channels, padding, seed = spec
    model, shape = _random_model(kind, channels, padding, seed)
    x = torch.rand(N_POINTS, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref, out = model(x), fold_for_analysis(model)(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    report = analyze(model, example_inputs=x[:8])
    assert not any("folded copy does not compute" in n for n in report.notes)


def test_flat_inputs_with_per_feature_statistics_keep_the_bound_sound():
    """The issue's case: an FCN over (6, 1, 1) inputs with six means and stds, fed (N, 6)."""
    from robustprune.models import create_model

    torch.manual_seed(0)
    mean, std = [0.1, 0.3, 0.5, 0.2, 0.4, 0.6], [0.1, 0.2, 0.3, 0.15, 0.25, 0.5]
    model = create_model("fcn", input_shape=(6, 1, 1), width=16, mean=mean, std=std).eval()
    x = torch.rand(N_POINTS, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(fold_for_analysis(model)(x), model(x), rtol=1e-4, atol=1e-5)
        assert torch.allclose(model(x), model(x.view(-1, 6, 1, 1)), rtol=1e-5, atol=1e-6)
    report = analyze(model, example_inputs=x[:4])
    encoder = nn.Sequential(model.normalize, model.features)
    for p in ("2", "inf"):
        assert _largest_local_lipschitz(encoder, (6,), p, 0) <= report.bounds[p].naive * (1 + 1e-5)


def pgd_unchecked(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: float, p: str) -> torch.Tensor:
    """A 50-step PGD on the cross-entropy inside the l_p ball of radius ``delta``, in [0, 1]."""
    step = 2.5 * delta / PGD_STEPS
    g = torch.Generator().manual_seed(1)
    adv = (x + delta * (2 * torch.rand(x.shape, generator=g) - 1) / (1 if p == "inf" else math.sqrt(x[0].numel())))
    adv = adv.clamp(0, 1)
    for _ in range(PGD_STEPS):
        adv.requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(model(adv), y, reduction="sum"), adv)[0]
        with torch.no_grad():
            if p == "inf":
                adv = adv + step * grad.sign()
                adv = x + (adv - x).clamp(-delta, delta)
            else:
                unit = grad / _norm(grad, "2").clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
                adv = adv + step * unit
                d = adv - x
                scale = (delta / _norm(d, "2").clamp_min(1e-12)).clamp(max=1.0)
                adv = x + d * scale.view(-1, *[1] * (x.ndim - 1))
            adv = adv.clamp(0, 1)
    return adv.detach()


@settings(max_examples=4, deadline=None, derandomize=True)
@given(spec=MODELS, p=st.sampled_from(("2", "inf")))
@example(spec=("conv", 3, 1, 0), p="2")
@example(spec=("conv", 2, 0, 1), p="inf")
@example(spec=("mlp-flat", 3, 0, 2), p="inf")
def test_certified_points_survive_pgd_and_the_gap_bound_holds(spec, p):
    kind, channels, padding, seed = spec
    model, shape = _random_model(kind, channels, padding, seed)
    x = torch.rand(N_POINTS, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(dim=1)
    first = analyze(model, example_inputs=x[:2], norms=(p,))
    lipschitz, head_norm = first.bounds[p].naive, first.bounds[p].head_norm
    margins = logit_margins(logits, y)
    # a budget at which about half of the points are certified
    delta = float(margins.median()) / (2 * lipschitz * head_norm)
    report = analyze(model, example_inputs=x[:2], data=(x, y), norms=(p,), delta=delta,
                     max_samples=N_POINTS, alignment_samples=8)
    bound = report.bounds[p]
    certified = margins > 2 * delta * lipschitz * head_norm
    assert bound.certified_fraction == float(certified.double().mean()) and certified.any()
    adv = pgd_unchecked(model, x, y, delta, p)
    assert float(_norm(adv - x, p).max()) <= delta * (1 + 1e-5) + 1e-6  # float32 rounding
    with torch.no_grad():
        adv_logits = model(adv)
        gap = F.cross_entropy(adv_logits, y, reduction="none") - F.cross_entropy(logits, y, reduction="none")
    assert torch.equal(adv_logits[certified].argmax(dim=1), y[certified])
    assert bound.head_loss == "softmax"
    assert float(gap.max()) <= bound.gap * (1 + 1e-6) + 1e-6
