"""Compressibility, dispersion, operator norms, alignment, Lipschitz and gap bounds.

Definitions follow DESIGN.md ("Definitions"); ``q`` defaults to 2. For a non-negative
vector ``theta`` of length ``n`` sorted descending, ``theta_k`` keeps its ``k`` largest
entries. A weight is matricized with rows = output units (:func:`robustprune.layers.matricize`);
neuron compressibility uses the row l1 norms ``nu_i = ||W_i||_1``, spectral compressibility
the singular values ``sigma`` of the matricized weight.

Everything here is deterministic: power iterations start from a vector drawn from a local,
fixed-seed generator and never touch the global RNG. Spectra, residual curves and
dispersions are computed in float64 (one ``svdvals`` per weight, no loop over rows);
power iterations through convolutions run in the layer's own dtype.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers import LowRankLinear, first_layer, matricize

__all__ = [
    "Norm",
    "residual_curve",
    "relative_residual",
    "k_for_eps",
    "dispersion",
    "structure_factor",
    "Compressibility",
    "compressibility",
    "neuron_compressibility",
    "spectral_compressibility",
    "row_norms",
    "singular_values",
    "operator_norm",
    "conv_norm_bound_factor",
    "alignment",
    "naive_lipschitz_bound",
    "aligned_lipschitz_bound",
    "gap_bound",
    "logit_margins",
    "certified_fraction",
    "AuditResult",
    "top_input_direction",
    "dominant_direction_audit",
]

logger = logging.getLogger(__name__)

Norm = Literal["2", "inf"]

#: relative tolerance of the power iterations for operator norms (DESIGN: 1e-4 relative)
POWER_TOL = 1e-4
#: relative tolerance of the power iterations through composite operators (alignment is a
#: ratio reported to 3-4 digits; each step costs a batch of forward and adjoint convolutions)
ALIGNMENT_TOL = 1e-3
_SEED = 0
#: DGKS re-orthogonalization threshold (see :func:`_orthogonalize`)
_DGKS = 1 / math.sqrt(2)


# --------------------------------------------------------------------------- vectors


def _as_theta(theta: torch.Tensor, name: str = "theta") -> torch.Tensor:
    """Validated, float64, sorted-descending copy of a non-negative 1-D vector."""
    t = torch.as_tensor(theta).detach()
    if t.ndim != 1 or t.numel() == 0:
        raise InvalidArgumentError(f"{name} must be a non-empty 1-D vector, got shape {tuple(t.shape)}.")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise InvalidArgumentError(f"{name} has non-finite entries (NaN or inf); check the weights.")
    if (t < 0).any():
        raise InvalidArgumentError(f"{name} must be non-negative (norms or singular values).")
    return torch.sort(t, descending=True).values


def _check_q(q: float) -> float:
    if not (q >= 1 or math.isinf(q)):
        raise InvalidArgumentError(f"q must be >= 1 (a norm), got {q}.")
    return float(q)


def _check_k(k: int, n: int) -> int:
    if not 1 <= int(k) <= n:
        raise InvalidArgumentError(f"k must be in [1, {n}] for a vector of length {n}, got {k}.")
    return int(k)


def _check_eps(eps: float) -> float:
    if not 0 < float(eps) < 1:
        raise InvalidArgumentError(f"eps must be in (0, 1), got {eps}.")
    return float(eps)


def _residual_curve(theta_sorted: torch.Tensor, q: float) -> torch.Tensor:
    """``eps_q(theta, k)`` for every ``k = 1..n`` at once (vectorized, float64)."""
    total = torch.linalg.vector_norm(theta_sorted, ord=q)
    if total == 0:
        raise InvalidArgumentError("theta is all zeros: compressibility is undefined for a zero weight.")
    if math.isinf(q):
        tail = torch.cat([theta_sorted[1:], theta_sorted.new_zeros(1)])  # max of the tail
        return tail / total
    powers = (theta_sorted / total) ** q  # scale first: no overflow
    # tail[k-1] = sum_{i > k} powers_i, summed from the small end (exactly 0 at k = n)
    suffix = torch.flip(torch.cumsum(torch.flip(powers, [0]), 0), [0])
    tail = torch.cat([suffix[1:], powers.new_zeros(1)])
    return tail.clamp_min(0) ** (1.0 / q)


def residual_curve(theta: torch.Tensor, q: float = 2) -> torch.Tensor:
    """``eps_q(theta, k)`` for every ``k = 1..n`` at once (float64, index ``k - 1``).

    ``theta`` is any non-negative 1-D vector (sorted here, descending); the curve is
    non-increasing and ends at exactly 0. This is the one residual computation of the
    package: :func:`relative_residual`, :func:`k_for_eps` and the pruners' breakpoints
    all read it."""
    return _residual_curve(_as_theta(theta), _check_q(q))


def relative_residual(theta: torch.Tensor, k: int, q: float = 2) -> float:
    """``eps_q(theta, k) = ||theta - theta_k||_q / ||theta||_q``; scale invariant, in [0, 1)."""
    t = _as_theta(theta)
    k = _check_k(k, t.numel())
    return float(_residual_curve(t, _check_q(q))[k - 1])


def k_for_eps(theta: torch.Tensor, eps: float, q: float = 2) -> int:
    """``k_q(theta, eps) = min{k >= 1 : eps_q(theta, k) <= eps}``.

    ``eps`` must be in (0, 1); ``k = n`` always qualifies (the residual is 0)."""
    eps = _check_eps(eps)
    t = _as_theta(theta)
    curve = _residual_curve(t, _check_q(q))
    # tiny slack for round-off: eps_q(theta, n) is exactly 0 in exact arithmetic
    ok = curve <= float(eps) + 1e-12
    return int(torch.nonzero(ok)[0]) + 1


def dispersion(theta: torch.Tensor, k: int, q: float = 2) -> float:
    """``beta_q(theta, k) = 1 - ||theta_k||_q / (k^(1/q) * theta_(1))``.

    In ``[0, 1 - k^(-1/q)]``; 0 when the top-k entries are equal."""
    t = _as_theta(theta)
    k = _check_k(k, t.numel())
    return _dispersion_sorted(t, k, _check_q(q))


def _dispersion_sorted(t: torch.Tensor, k: int, q: float) -> float:
    top = t[:k]
    if top[0] == 0:
        raise InvalidArgumentError("theta is all zeros: dispersion is undefined for a zero weight.")
    ratio = torch.linalg.vector_norm(top / top[0], ord=q) / (1.0 if math.isinf(q) else k ** (1.0 / q))
    return float(min(1.0, max(0.0, 1.0 - float(ratio))))


def _structure_factor(eps: float, beta: float, k: int, q: float) -> float:
    if math.isinf(q):
        return 1.0  # ||theta_k||_inf = ||theta||_inf = theta_(1)
    kept = max(0.0, 1.0 - eps**q) ** (1.0 / q)
    return kept / (k ** (1.0 / q) * (1.0 - beta))


def structure_factor(theta: torch.Tensor, k: int, q: float = 2) -> float:
    """``S = sqrt(1 - eps^2) / (sqrt(k) * (1 - beta))`` with ``eps = eps_2(theta, k)`` and
    ``beta = beta_2(theta, k)`` (for general ``q``: ``(1 - eps^q)^(1/q) / (k^(1/q) (1 - beta))``).

    Algebraically ``S = theta_(1) / ||theta||_q`` for every ``k``: the structure part of the
    structure x scale identities ``||W||_2 = S_sigma ||W||_F`` (theta = sigma) and
    ``||W||_inf = nu_(1) = S_nu ||nu||_2 <= S_nu sqrt(d) ||W||_F`` (theta = row l1 norms)."""
    t = _as_theta(theta)
    k = _check_k(k, t.numel())
    q = _check_q(q)
    eps = float(_residual_curve(t, q)[k - 1])
    return _structure_factor(eps, _dispersion_sorted(t, k, q), k, q)


@dataclass(frozen=True)
class Compressibility:
    """``(q, k, eps)``-compressibility of a vector ``theta`` with its dispersion at ``k``.

    ``eps`` is the achieved relative residual ``eps_q(theta, k)``, ``beta`` the dispersion
    ``beta_q(theta, k)``, ``structure_factor`` ``S`` (see :func:`structure_factor`);
    ``theta_max = theta_(1)`` and ``theta_norm = ||theta||_q``."""

    theta: str
    q: float
    n: int
    k: int
    eps: float
    beta: float
    structure_factor: float
    theta_max: float
    theta_norm: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def compressibility(
    theta: torch.Tensor,
    *,
    eps: float | None = None,
    k: int | None = None,
    q: float = 2,
    kind: str = "vector",
) -> Compressibility:
    """Compressibility of ``theta`` at ``k`` or at the smallest ``k`` meeting ``eps``
    (``k = k_q(theta, eps)``); pass exactly one of ``eps`` and ``k``."""
    if (eps is None) == (k is None):
        raise InvalidArgumentError("Pass exactly one of eps= (then k = k_q(theta, eps)) and k=.")
    t = _as_theta(theta)
    q = _check_q(q)
    curve = _residual_curve(t, q)
    if eps is not None:
        eps = _check_eps(eps)
        k = int(torch.nonzero(curve <= eps + 1e-12)[0]) + 1
    k = _check_k(int(k), t.numel())  # type: ignore[arg-type]
    achieved = float(curve[k - 1])
    beta = _dispersion_sorted(t, k, q)
    return Compressibility(
        theta=kind,
        q=q,
        n=t.numel(),
        k=k,
        eps=achieved,
        beta=beta,
        structure_factor=_structure_factor(achieved, beta, k, q),
        theta_max=float(t[0]),
        theta_norm=float(torch.linalg.vector_norm(t, ord=q)),
    )


# --------------------------------------------------------------------------- weights


def _weight_matrix(layer: nn.Module | torch.Tensor, name: str | None = None) -> torch.Tensor:
    """The matricized weight, detached, float64, validated non-empty and finite."""
    return _checked_weight(layer, name).to(torch.float64)


def _checked_weight(layer: nn.Module | torch.Tensor, name: str | None = None) -> torch.Tensor:
    """The matricized weight, detached, in its own dtype, validated non-empty and finite
    (a value is finite in float64 iff it is finite in its own floating dtype)."""
    w = matricize(layer).detach()
    label = f"Layer '{name}'" if name else f"The {type(layer).__name__} weight"
    if w.numel() == 0:
        raise InvalidArgumentError(f"{label} is empty (shape {tuple(w.shape)}); nothing to measure.")
    if w.is_floating_point() and not torch.isfinite(w).all():
        raise InvalidArgumentError(
            f"{label} has non-finite entries (NaN or inf); the model diverged or was loaded "
            "incorrectly. Fix the weights before measuring them."
        )
    return w


def row_norms(layer: nn.Module | torch.Tensor, q: float = 1) -> torch.Tensor:
    """``nu_i = ||W_i||_q`` of every row (output unit) of the matricized weight, float64.
    ``q = 1`` (the default) gives the rows whose maximum is ``||W||_inf``."""
    return torch.linalg.vector_norm(_weight_matrix(layer), ord=_check_q(q), dim=1)


def singular_values(layer: nn.Module | torch.Tensor) -> torch.Tensor:
    """Singular values of the matricized weight, descending, float64 (one ``svdvals``)."""
    return torch.linalg.svdvals(_weight_matrix(layer))


def neuron_compressibility(
    layer: nn.Module | torch.Tensor, *, eps: float | None = None, k: int | None = None, q: float = 2
) -> Compressibility:
    """Neuron compressibility: ``theta = nu``, the row l1 norms (``||W||_inf = nu_(1)``)."""
    return compressibility(row_norms(layer, 1), eps=eps, k=k, q=q, kind="row l1 norms")


def spectral_compressibility(
    layer: nn.Module | torch.Tensor, *, eps: float | None = None, k: int | None = None
) -> Compressibility:
    """Spectral compressibility: ``theta = sigma`` of the matricized weight, ``q = 2``, so
    ``eps_2(sigma, k) = ||W - W_k||_F / ||W||_F`` (Eckart-Young)."""
    return compressibility(singular_values(layer), eps=eps, k=k, q=2, kind="singular values")


# --------------------------------------------------------------------------- operator norms


def _check_p(p: str | float) -> str:
    key = str(p).lower().replace("l", "")
    if key in ("2", "2.0"):
        return "2"
    if key in ("inf", "∞"):
        return "inf"
    raise InvalidArgumentError(f"p must be '2' or 'inf' (the l2 or l-infinity norm), got {p!r}.")


def _is_linear_like(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, LowRankLinear))


def _sample_shape(layer: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """Per-sample input shape ``(C, H, W)`` of a conv (a leading batch dim is dropped)."""
    if input_shape is None:
        raise InvalidArgumentError(
            f"The operator norm of a {type(layer).__name__} depends on the input size: pass "
            "input_shape=(C, H, W) (or use mode='matricized')."
        )
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidArgumentError(f"input_shape must be (C, H, W), got {tuple(input_shape)}.")
    if isinstance(layer, nn.Conv2d) and shape[0] != layer.in_channels:
        raise InvalidArgumentError(
            f"input_shape has {shape[0]} channels but the conv expects {layer.in_channels}."
        )
    return shape


def _linear_part(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's map without its bias (the linear operator whose norm is measured)."""
    if isinstance(layer, nn.Conv2d):
        return lambda x: layer._conv_forward(x, layer.weight, None)
    if isinstance(layer, nn.Linear):
        return lambda x: F.linear(x, layer.weight)
    if isinstance(layer, LowRankLinear):
        return lambda x: F.linear(F.linear(x, layer.a.weight), layer.b.weight)
    raise ModelNotSupportedError(
        f"{type(layer).__name__} is not a Linear, Conv2d or LowRankLinear layer."
    )


def _flat_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def _batch_shape(n: int, t: torch.Tensor) -> tuple[int, ...]:
    return (n,) + (1,) * (t.ndim - 1)


def _power_iteration(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    v: torch.Tensor,
    *,
    tol: float = POWER_TOL,
    max_iter: int = 300,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top singular value and right singular vector of a batch of linear operators ``A``
    (one per leading index of ``v``), given ``forward = A`` and ``adjoint = A^T``.

    A power iteration on ``A^T A`` from ``v``, accelerated by Lanczos: the iterates of the
    power iteration span a Krylov subspace, and the largest Ritz value of ``A^T A`` on it
    (full reorthogonalization, see :func:`_orthogonalize`; float64 tridiagonal eigenproblem)
    is at least the plain power iteration's estimate after the same number of steps and at
    most ``sigma_max^2``. Stops when every relative Ritz residual
    ``||A^T A v - sigma^2 v|| / sigma^2`` is at most ``2 tol``, so that ``sigma`` is within
    ``tol`` relative of a singular value (the top one: the start is a generic random vector).
    Returns ``(sigma (float64), v)``."""
    n, shape = v.shape[0], v.shape
    q = v.reshape(n, -1)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-30)
    basis = q.new_empty(n, min(max_iter, 32), q.shape[1])  # grows by doubling
    # the tridiagonal matrix T of the Lanczos recurrence, float64: diagonal and off-diagonal
    alphas = torch.zeros(n, max_iter, dtype=torch.float64, device=q.device)
    betas = torch.zeros(n, max_iter, dtype=torch.float64, device=q.device)
    q_prev, beta_prev = torch.zeros_like(q), q.new_zeros(n)
    theta = torch.zeros(n, dtype=torch.float64, device=q.device)
    ritz = torch.ones(n, 1, dtype=torch.float64, device=q.device)
    residual = torch.full_like(theta, math.inf)
    for step in range(max_iter):
        if step == basis.shape[1]:
            grown = basis.new_empty(n, min(max_iter, 2 * step), basis.shape[2])
            grown[:, :step] = basis
            basis = grown
        basis[:, step] = q
        w = adjoint(forward(q.view(shape))).reshape(n, -1)
        alpha = (w * q).sum(dim=1)
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        w, beta = _orthogonalize(w, basis[:, : step + 1])
        alphas[:, step] = alpha
        betas[:, step] = beta
        tri = torch.diag_embed(alphas[:, : step + 1])
        if step:
            off = torch.diag_embed(betas[:, :step], offset=1)
            tri = tri + off + off.transpose(1, 2)
        values, vectors = torch.linalg.eigh(tri)
        theta, ritz = values[:, -1].clamp_min(0), vectors[:, :, -1]
        # |lambda - theta| <= beta |s_last|, and sigma's relative error is half lambda's
        residual = betas[:, step] * ritz[:, -1].abs() / theta.clamp_min(1e-300)
        if bool((residual <= 2 * tol).all()):
            break
        exhausted = beta <= 1e-6 * theta.to(beta.dtype).clamp_min(1e-30)  # invariant subspace
        q_prev, beta_prev = q, beta
        q = torch.where(exhausted[:, None], torch.zeros_like(w), w / beta.clamp_min(1e-30)[:, None])
    else:
        logger.warning(
            "power iteration stopped after %d steps with relative residual %.1e > %.0e",
            max_iter,
            float(residual.max()),
            2 * tol,
        )
    logger.debug("power iteration (Lanczos): %d steps", step + 1)
    vec = torch.bmm(ritz.to(q.dtype)[:, None, :], basis[:, : ritz.shape[1]])[:, 0]
    vec = vec / torch.linalg.vector_norm(vec, dim=1, keepdim=True).clamp_min(1e-30)
    return theta.sqrt(), vec.view(shape)


def _orthogonalize(w: torch.Tensor, span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` minus its projection on the orthonormal rows of ``span`` (batched), and its norm.

    Classical Gram-Schmidt with the DGKS criterion: a second pass ("twice is enough") only
    where the first removed more than ``1 - 1/sqrt(2)`` of ``w``'s norm, the case in which one
    pass can leave ``w`` measurably non-orthogonal. Each pass reads the whole basis twice, the
    largest cost of a Lanczos step after the operator itself."""
    before = torch.linalg.vector_norm(w, dim=1)
    w = w - torch.bmm(torch.bmm(span, w[:, :, None]).transpose(1, 2), span)[:, 0]
    after = torch.linalg.vector_norm(w, dim=1)
    if bool((after < _DGKS * before).any()):
        w = w - torch.bmm(torch.bmm(span, w[:, :, None]).transpose(1, 2), span)[:, 0]
        after = torch.linalg.vector_norm(w, dim=1)
    return w, after


def _start_vector(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(_SEED)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _linear_adjoint(
    fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u -> A^T u`` for a linear ``fn = A`` (a reusable vector-Jacobian product)."""
    _, vjp_fn = torch.func.vjp(fn, example)
    return lambda u: vjp_fn(u)[0]


def _layer_adjoint(layer: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u -> W^T u`` for the layer's linear part at inputs shaped like ``example``:
    ``conv_transpose2d`` for zero-padded convs (with the output padding that restores the
    input size), the vector-Jacobian product otherwise (other padding modes, Linear)."""
    if (
        isinstance(layer, nn.Conv2d)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and example.ndim == 4
    ):
        with torch.no_grad():
            out_size = layer._conv_forward(example[:1], layer.weight, None).shape[-2:]
        extra = []
        for size_in, size_out, k, s, p, d in zip(
            example.shape[-2:], out_size, layer.kernel_size, layer.stride, layer.padding, layer.dilation
        ):
            extra.append(int(size_in) - ((int(size_out) - 1) * s - 2 * p + d * (k - 1) + 1))
        if all(0 <= e < max(s, d) for e, s, d in zip(extra, layer.stride, layer.dilation)):
            return lambda u: F.conv_transpose2d(
                u, layer.weight, None, layer.stride, layer.padding, tuple(extra), layer.groups, layer.dilation
            )
    return _linear_adjoint(_linear_part(layer), example)


def operator_norm(
    layer: nn.Module | torch.Tensor,
    p: Norm | str | float = "2",
    input_shape: Sequence[int] | None = None,
    mode: Literal["matricized", "operator"] = "matricized",
    *,
    tol: float = POWER_TOL,
    max_iter: int = 300,
) -> float:
    """``||W||_p`` of a layer (biases excluded).

    Linear (and LowRankLinear): exact, ``||W||_2 = sigma_max``, ``||W||_inf = max_i ||W_i||_1``.
    Conv2d, ``mode="operator"``: the norm of the convolution as an operator on inputs of
    ``input_shape``; l2 by power iteration with ``conv2d`` and its adjoint ``conv_transpose2d``
    (the vector-Jacobian product for non-zero padding modes), deterministic start, converged to
    ``tol`` relative; l-infinity = max over output channels of the kernel's absolute sum
    (exact away from the borders and an upper bound everywhere).
    Conv2d, ``mode="matricized"``: the same formulas applied to the ``out x (in/groups*kh*kw)``
    matrix; for l-infinity this is the operator norm's closed form, for l2 it is the
    *matricized* ``sigma_max``, which differs from the operator norm (see
    :func:`conv_norm_bound_factor` for the factor that makes it an upper bound)."""
    p = _check_p(p)
    if mode not in ("matricized", "operator"):
        raise InvalidArgumentError(f"mode must be 'matricized' or 'operator', got {mode!r}.")
    if isinstance(layer, nn.Conv2d) and mode == "operator" and p == "2":
        shape = _sample_shape(layer, input_shape)
        _checked_weight(layer)  # validates finiteness with a clear message
        with torch.no_grad():
            x0 = _start_vector((1, *shape), layer.weight)
            fwd = _linear_part(layer)
            adj = _layer_adjoint(layer, x0)
            sigma, _ = _power_iteration(fwd, adj, x0, tol=tol, max_iter=max_iter)
        return float(sigma[0])
    w = _weight_matrix(layer)
    if p == "inf":
        return float(w.abs().sum(dim=1).max())
    return float(torch.linalg.matrix_norm(w, ord=2))


def conv_norm_bound_factor(layer: nn.Module) -> float:
    """``c`` with ``||conv||_2 <= c * sigma_max(matricized W)`` on every input size.

    ``c = sqrt(r_h r_w)``, ``r = ceil(k / (s / gcd(s, d)))`` the most kernel taps that can land
    on one input pixel (kernel ``k``, stride ``s``, dilation ``d``): the conv is
    ``W_mat @ im2col(x)`` and each pixel appears at most ``r_h r_w`` times in ``im2col(x)``.
    1 for Linear layers."""
    if not isinstance(layer, nn.Conv2d):
        return 1.0
    taps = 1
    for k, s, d in zip(layer.kernel_size, layer.stride, layer.dilation):
        period = s // math.gcd(s, d)
        taps *= min(k, math.ceil(k / period))
    return math.sqrt(taps)


# --------------------------------------------------------------------------- alignment


def alignment(
    layer_a: nn.Module,
    layer_b: nn.Module,
    p: Norm | str | float = "2",
    mode: Literal["data", "identity"] = "data",
    data: torch.Tensor | None = None,
    *,
    through: Callable[[torch.Tensor], torch.Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    max_samples: int = 256,
    norms: tuple[float, float] | None = None,
    tol: float = ALIGNMENT_TOL,
    max_iter: int = 300,
) -> float:
    """Alignment ``A_p = max_D ||W_b D W_a||_p / (||W_b||_p ||W_a||_p)`` of consecutive layers.

    ``D`` is the Jacobian of the ops between the layers (for a ReLU, the binary diagonal
    mask of active units). ``mode="data"`` takes the max over the masks observed on ``data``
    (the *inputs of layer_a*, up to ``max_samples`` of them); ``mode="identity"`` uses
    ``D = I`` (the activation replaced by the identity). In (0, 1] whenever the ops between
    are 1-Lipschitz (ReLU masks, average or non-overlapping max pooling, flattening).

    ``through`` maps layer_a's output to layer_b's input; default: ReLU in data mode, the
    identity in identity mode, followed by flattening when a conv feeds a Linear. In identity
    mode pass only the linear ops (the activation is what ``D = I`` replaces). ``norms``
    optionally gives precomputed ``(||W_a||_p, ||W_b||_p)`` (for convolutions: the operator
    norms at the input sizes seen here).

    Computation: Linear pairs with elementwise ops between are formed as matrices
    ``W_b diag(d) W_a`` (``d`` = the elementwise Jacobian, deduplicated over samples), l2 by
    batched ``matrix_norm`` and l-infinity by row sums, exactly. Pairs involving a conv (or
    non-elementwise ops such as pooling) are measured by batched power iteration through the
    masked composite operator ``v -> W_b J(z) W_a v`` built from the actual modules with
    ``torch.func.jvp``/``vjp`` (``z`` = layer_a's output on each sample), and the norms in
    the denominator are the operator norms at the same input sizes (``tol`` relative: the
    cost is one batch of forward and adjoint convolutions per step, so data mode on large
    convolutions is best run on a GPU or with fewer samples). The l-infinity value of
    such a composite needs every row of a position-dependent operator and is not computed:
    a :class:`ModelNotSupportedError` says so.
    """
    p = _check_p(p)
    if mode not in ("data", "identity"):
        raise InvalidArgumentError(f"mode must be 'data' or 'identity', got {mode!r}.")
    if max_samples < 1:
        raise InvalidArgumentError(f"max_samples must be >= 1, got {max_samples}.")
    for layer in (layer_a, layer_b):
        _checked_weight(layer)  # validates type, emptiness, finiteness
    ref = layer_a.weight if not isinstance(layer_a, LowRankLinear) else layer_a.a.weight
    x = _alignment_inputs(layer_a, mode, data, input_shape, max_samples, ref)
    user_through = through if through is not None else _default_through(layer_a, layer_b, mode)

    def through(z: torch.Tensor) -> torch.Tensor:  # never lets an in-place op touch z
        return user_through(z.clone())

    with torch.no_grad():
        z0 = layer_a(x)
        try:
            zb = through(z0)
            layer_b(zb)
        except (RuntimeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"layer_b does not accept layer_a's output after `through` ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); pass the ops between them as through=."
            ) from exc
    diag = _elementwise_jacobian(through, z0) if _is_linear_like(layer_a) and _is_linear_like(layer_b) else None
    if diag is not None:
        num = _matrix_alignment_numerator(layer_a, layer_b, diag, p)
        if norms is None:
            norms = (operator_norm(layer_a, p), operator_norm(layer_b, p))
    else:
        if p == "inf":
            raise ModelNotSupportedError(
                "The l-infinity alignment of a pair involving a convolution or pooling is not "
                "computed: its row sums vary with position and mask. Use p='2'."
            )
        num = _operator_alignment_numerator(layer_a, layer_b, through, x, z0, tol, max_iter)
        if norms is None:
            norms = (_operator_l2(layer_a, x, tol, max_iter), _operator_l2(layer_b, zb[:1], tol, max_iter))
    den = float(norms[0]) * float(norms[1])
    if den == 0:
        raise InvalidArgumentError("A layer has an all-zero weight: alignment is undefined.")
    return float(num / den)


def _alignment_inputs(
    layer_a: nn.Module,
    mode: str,
    data: torch.Tensor | None,
    input_shape: Sequence[int] | None,
    max_samples: int,
    ref: torch.Tensor,
) -> torch.Tensor:
    if data is not None:
        x = torch.as_tensor(data)
        if x.ndim < 2 or x.shape[0] == 0:
            raise InvalidArgumentError(
                f"data must be a batch of layer_a's inputs (N, ...), got shape {tuple(x.shape)}."
            )
        return x[:max_samples].detach().to(device=ref.device, dtype=ref.dtype)
    if mode == "data":
        raise InvalidArgumentError(
            "mode='data' needs data= (a batch of layer_a's inputs); or use mode='identity'."
        )
    if _is_linear_like(layer_a):
        d = layer_a.in_features
        return torch.zeros(1, d, device=ref.device, dtype=ref.dtype)
    shape = _sample_shape(layer_a, input_shape)
    return torch.zeros(1, *shape, device=ref.device, dtype=ref.dtype)


def _default_through(layer_a: nn.Module, layer_b: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    flatten = isinstance(layer_a, nn.Conv2d) and _is_linear_like(layer_b)
    if mode == "data":
        return (lambda z: torch.relu(z).flatten(1)) if flatten else torch.relu
    return (lambda z: z.flatten(1)) if flatten else (lambda z: z)


def _jvp(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``J_fn(z) t`` by forward-mode AD."""
    with warnings.catch_warnings():
        # torch's first forward-mode call scripts its decompositions with the deprecated
        # torch.jit.script; the warning is torch-internal and says nothing about our inputs
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return torch.func.jvp(fn, (z,), (t,))[1]


def _elementwise_jacobian(
    through: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor
) -> torch.Tensor | None:
    """The diagonal of ``through``'s Jacobian at each sample when it is elementwise
    (ReLU-like, dropout, folded BN), else ``None``."""
    with torch.no_grad():
        out = through(z0)
        if out.shape != z0.shape or z0.ndim != 2:
            return None
        diag = _jvp(through, z0, torch.ones_like(z0))
        g = torch.Generator().manual_seed(_SEED)
        probe = torch.randn(z0.shape, generator=g, dtype=torch.float32).to(z0)
        if not torch.allclose(_jvp(through, z0, probe), diag * probe, rtol=1e-4, atol=1e-6):
            return None
    return diag


def _matrix_alignment_numerator(
    layer_a: nn.Module, layer_b: nn.Module, diag: torch.Tensor, p: str
) -> float:
    wa, wb = _weight_matrix(layer_a), _weight_matrix(layer_b)
    masks = torch.unique(diag.to(torch.float64), dim=0)
    # chunk the (n_masks, h_b, d_a) stack to ~2^24 entries
    chunk = max(1, (1 << 24) // max(1, wb.shape[0] * wa.shape[1]))
    best = 0.0
    for start in range(0, masks.shape[0], chunk):
        prod = (wb.unsqueeze(0) * masks[start : start + chunk].unsqueeze(1)) @ wa
        if p == "2":
            value = torch.linalg.matrix_norm(prod, ord=2).max()
        else:
            value = prod.abs().sum(dim=2).max()
        best = max(best, float(value))
    return best


def _operator_l2(layer: nn.Module, x: torch.Tensor, tol: float, max_iter: int) -> float:
    if _is_linear_like(layer):
        return operator_norm(layer, "2")
    return operator_norm(layer, "2", tuple(x.shape[1:]), mode="operator", tol=tol, max_iter=max_iter)


def _operator_alignment_numerator(
    layer_a: nn.Module,
    layer_b: nn.Module,
    through: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    z0: torch.Tensor,
    tol: float,
    max_iter: int,
) -> float:
    lin_a, lin_b = _linear_part(layer_a), _linear_part(layer_b)
    # samples per chunk so that the Krylov basis stays under ~1 GiB of float32
    chunk = max(1, (1 << 28) // max(1, x[0].numel() * max_iter))
    best = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            xs, zs = x[start : start + chunk], z0[start : start + chunk]
            adj_a = _layer_adjoint(layer_a, xs)
            _, vjp_t = torch.func.vjp(through, zs)
            adj_b = _layer_adjoint(layer_b, through(zs))

            def forward(v: torch.Tensor, zs: torch.Tensor = zs) -> torch.Tensor:
                return lin_b(_jvp(through, zs, lin_a(v)))

            def adjoint(u: torch.Tensor, adj_a=adj_a, vjp_t=vjp_t, adj_b=adj_b) -> torch.Tensor:
                return adj_a(vjp_t(adj_b(u))[0])

            v0 = _start_vector((1, *xs.shape[1:]), xs).expand_as(xs).contiguous()
            sigma, _ = _power_iteration(forward, adjoint, v0, tol=tol, max_iter=max_iter)
            best = max(best, float(sigma.max()))
    return best


# --------------------------------------------------------------------------- bounds


def _check_norms(norms: Sequence[float], what: str = "layer norms") -> list[float]:
    values = [float(n) for n in norms]
    if any(not math.isfinite(n) or n < 0 for n in values):
        raise InvalidArgumentError(f"{what} must be finite and non-negative, got {values}.")
    return values


def _check_between(between: Sequence[float] | None, n_layers: int) -> list[float]:
    if between is None:
        return []
    values = _check_norms(between, "between-layer Lipschitz factors")
    if len(values) not in (max(0, n_layers - 1), n_layers):
        raise InvalidArgumentError(
            f"between must have one factor per gap between layers ({n_layers - 1}) or one "
            f"more for the ops after the last layer ({n_layers}), got {len(values)}."
        )
    return values


def naive_lipschitz_bound(norms: Sequence[float], between: Sequence[float] | None = None) -> float:
    """``L_naive = prod_l ||W^l||_p`` (times the Lipschitz factors ``between[l]`` of the ops
    after layer ``l``, all 1 for ReLU, pooling and flattening): always a valid upper bound."""
    values = _check_norms(norms)
    result = math.prod(values)
    return float(result * math.prod(_check_between(between, len(values))))


def aligned_lipschitz_bound(
    norms: Sequence[float],
    alignments: Sequence[float | None],
    between: Sequence[float] | None = None,
) -> float:
    """Layers grouped in disjoint consecutive pairs (1, 2), (3, 4), ...; each pair contributes
    ``A_p(l) ||W^{l+1}||_p ||W^l||_p`` and an unpaired last layer its own norm.

    ``alignments[l]`` is ``A_p`` of layers ``l`` and ``l + 1`` (only even ``l`` are used; the
    others may be ``None``); it already includes the ops between the pair, so ``between[l]``
    enters only for the gaps between pairs and after the last layer. With the exact max over
    masks this is an upper bound; with data masks it is an estimate."""
    values = _check_norms(norms)
    factors = _check_between(between, len(values))
    if len(alignments) != max(0, len(values) - 1):
        raise InvalidArgumentError(
            f"alignments must have one entry per consecutive pair ({len(values) - 1}), got "
            f"{len(alignments)}."
        )
    result = 1.0
    for i in range(0, len(values), 2):
        if i + 1 < len(values):
            a = alignments[i]
            if a is None or not math.isfinite(float(a)) or float(a) < 0:
                raise InvalidArgumentError(f"alignment of pair ({i}, {i + 1}) is missing or invalid: {a}.")
            result *= float(a) * values[i] * values[i + 1]
            gap = i + 1
        else:
            result *= values[i]
            gap = i
        if gap < len(factors):
            result *= factors[gap]
    return float(result)


def gap_bound(delta: float, lipschitz: float, head_norm: float) -> float:
    """Adversarial gap bound (paper, Corollary 3.3): ``Delta_p <= delta * L_p(Phi) * ||C||_(p->p)``."""
    if not math.isfinite(float(delta)) or float(delta) < 0:
        raise InvalidArgumentError(f"delta must be a finite budget >= 0, got {delta}.")
    return float(delta) * float(lipschitz) * float(head_norm)


def logit_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y(x) - max_{j != y} f_j(x)`` per sample (negative when misclassified)."""
    logits = torch.as_tensor(logits).detach().to(torch.float64)
    labels = torch.as_tensor(labels).to(device=logits.device, dtype=torch.long)
    if logits.ndim != 2 or logits.shape[1] < 2 or labels.shape != logits.shape[:1]:
        raise InvalidArgumentError(
            f"logits must be (N, C>=2) with labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise InvalidArgumentError(f"labels must be in [0, {logits.shape[1] - 1}].")
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def certified_fraction(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    delta: float,
    lipschitz: float,
    head_norm: float,
) -> float:
    """Fraction of points whose logit margin exceeds ``2 * delta * L * ||C||_(p->p)``.

    With a valid (naive) ``L`` of the encoder and the head's operator norm, no perturbation
    of size ``delta`` can change the logits by more than ``delta L ||C||`` in l-infinity, so
    these points are provably robust: the fraction never exceeds robust accuracy."""
    margins = logit_margins(logits, labels)
    if margins.numel() == 0:
        raise InvalidArgumentError("certified_fraction needs at least one sample.")
    threshold = 2.0 * gap_bound(delta, lipschitz, head_norm)
    return float((margins > threshold).double().mean())


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True)
class AuditResult:
    """Accuracy under the universal, data-free perturbation ``x +- delta * s`` with ``s`` the
    (sign of the) top right singular vector of the first layer; ``accuracy`` counts a point
    only when it survives both signs. ``random_accuracy`` is the same for a random direction
    of the same norm (a control: a compressible model fails the dominant direction first)."""

    p: str
    delta: float
    n: int
    clean_accuracy: float
    accuracy_plus: float
    accuracy_minus: float
    accuracy: float
    random_accuracy: float
    top_singular_value: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


class _StopForward(Exception):
    pass


def _first_layer_map(model: nn.Module, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> first layer's output`` (the forward stops right after that layer)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            captured["out"] = out
            raise _StopForward

        handle = layer.register_forward_hook(hook)
        try:
            model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "out" not in captured:
            raise ModelNotSupportedError("The model's forward never reached its first layer.")
        return captured["out"]

    return fn


def top_input_direction(
    model: nn.Module, input_shape: Sequence[int], *, tol: float = POWER_TOL, max_iter: int = 300
) -> tuple[torch.Tensor, float]:
    """``(v_1, sigma_1)``: the top right singular vector (unit l2, shape ``input_shape``) of the
    first layer as a linear map of the raw input (input normalization included), by power
    iteration through the model's own forward up to that layer. Deterministic."""
    found = first_layer(model)
    if found is None:
        raise ModelNotSupportedError("The model has no Linear or Conv2d layer.")
    _, layer = found
    shape = tuple(int(s) for s in input_shape)
    ref = next(model.parameters())
    fn = _first_layer_map(model, layer)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x0 = torch.full((1, *shape), 0.5, device=ref.device, dtype=ref.dtype)
            _, vjp_fn = torch.func.vjp(fn, x0)

            def forward(v: torch.Tensor) -> torch.Tensor:
                return _jvp(fn, x0, v)

            v0 = _start_vector((1, *shape), ref)
            sigma, v = _power_iteration(forward, lambda u: vjp_fn(u)[0], v0, tol=tol, max_iter=max_iter)
    finally:
        model.train(was_training)
    return v[0], float(sigma[0])


def dominant_direction_audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    delta: float,
    p: Norm | str | float = "inf",
    seed: int = 0,
    batch_size: int = 256,
) -> AuditResult:
    """Accuracy under ``x +- delta * sign(v_1)`` (l-infinity) or ``x +- delta * v_1`` (l2),
    ``v_1`` the top right singular vector of the first layer (see :func:`top_input_direction`);
    perturbed inputs are clipped to [0, 1]. One universal, data-free direction for all
    inputs; compressible models fail it first. Runs the model in eval mode and restores its
    mode; the global RNG is untouched (the control direction uses a local generator)."""
    p = _check_p(p)
    if not math.isfinite(float(delta)) or float(delta) < 0:
        raise InvalidArgumentError(f"delta must be a finite budget >= 0, got {delta}.")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.ndim < 2 or x.shape[0] == 0 or y.shape != x.shape[:1]:
        raise InvalidArgumentError(
            f"The audit needs inputs (N, ...) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    ref = next(model.parameters())
    x, y = x.to(device=ref.device, dtype=ref.dtype), y.to(ref.device)
    v1, sigma1 = top_input_direction(model, tuple(x.shape[1:]))
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(tuple(x.shape[1:]), generator=g, dtype=torch.float32).to(v1)
    if p == "inf":
        direction, control = torch.sign(v1), torch.sign(rand)
    else:
        direction, control = v1 / v1.norm(), rand / rand.norm()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean, plus, minus, both, rboth = [], [], [], [], []
            for start in range(0, x.shape[0], batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]

                def correct(shift: torch.Tensor | None, xb=xb, yb=yb) -> torch.Tensor:
                    inp = xb if shift is None else (xb + shift).clamp(0.0, 1.0)
                    return model(inp).argmax(dim=1) == yb

                c_plus, c_minus = correct(delta * direction), correct(-delta * direction)
                clean.append(correct(None))
                plus.append(c_plus)
                minus.append(c_minus)
                both.append(c_plus & c_minus)
                rboth.append(correct(delta * control) & correct(-delta * control))
    finally:
        model.train(was_training)

    def acc(parts: list[torch.Tensor]) -> float:
        return float(torch.cat(parts).double().mean())

    return AuditResult(
        p=p,
        delta=float(delta),
        n=int(x.shape[0]),
        clean_accuracy=acc(clean),
        accuracy_plus=acc(plus),
        accuracy_minus=acc(minus),
        accuracy=acc(both),
        random_accuracy=acc(rboth),
        top_singular_value=sigma1,
    )
