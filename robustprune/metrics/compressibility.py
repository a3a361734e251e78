"""Compressibility of a non-negative vector: relative residual, ``k``, dispersion, structure.

Definitions follow DESIGN.md ("Definitions"); ``q`` defaults to 2. For a non-negative
vector ``theta`` of length ``n`` sorted descending, ``theta_k`` keeps its ``k`` largest
entries:

- relative residual ``eps_q(theta, k) = ||theta - theta_k||_q / ||theta||_q``
  (:func:`residual_curve` gives it for every ``k`` at once; the pruners read the same curve);
- ``k_q(theta, eps) = min{k >= 1 : eps_q(theta, k) <= eps}``;
- dispersion ``beta_q(theta, k) = 1 - ||theta_k||_q / (k^(1/q) theta_(1))``;
- structure factor ``S = (1 - eps^q)^(1/q) / (k^(1/q) (1 - beta)) = theta_(1) / ||theta||_q``.

Neuron compressibility takes ``theta`` = the row l1 norms ``nu_i = ||W_i||_1`` of the
matricized weight, spectral compressibility its singular values ``sigma``. Everything is
computed in float64 and is scale invariant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.metrics._checks import as_real_tensor, check_count, check_eps, check_q
from robustprune.metrics.norms import row_norms, singular_values

__all__ = [
    "residual_curve",
    "relative_residual",
    "k_for_eps",
    "dispersion",
    "structure_factor",
    "Compressibility",
    "compressibility",
    "neuron_compressibility",
    "spectral_compressibility",
]


def residual_curve(theta: torch.Tensor, q: float = 2) -> torch.Tensor:
    """``eps_q(theta, k)`` for every ``k = 1..n`` at once (float64, index ``k - 1``).

    ``theta`` is any non-negative 1-D vector (sorted here, descending); the curve is
    non-increasing and ends at exactly 0. This is the one residual computation of the
    package: :func:`relative_residual`, :func:`k_for_eps` and the pruners' breakpoints
    all read it."""
    return _residual_curve(_as_theta(theta), check_q(q))


def relative_residual(theta: torch.Tensor, k: int, q: float = 2) -> float:
    """``eps_q(theta, k) = ||theta - theta_k||_q / ||theta||_q``; scale invariant, in [0, 1)."""
    t = _as_theta(theta)
    k = _check_k(k, t.numel())
    return float(_residual_curve(t, check_q(q))[k - 1])


def k_for_eps(theta: torch.Tensor, eps: float, q: float = 2) -> int:
    """``k_q(theta, eps) = min{k >= 1 : eps_q(theta, k) <= eps}``.

    ``eps`` must be in (0, 1); ``k = n`` always qualifies (the residual is 0)."""
    eps = check_eps(eps)
    t = _as_theta(theta)
    return _first_k(_residual_curve(t, check_q(q)), eps)


def dispersion(theta: torch.Tensor, k: int, q: float = 2) -> float:
    """``beta_q(theta, k) = 1 - ||theta_k||_q / (k^(1/q) * theta_(1))``.

    In ``[0, 1 - k^(-1/q)]``; 0 when the top-k entries are equal."""
    t = _as_theta(theta)
    k = _check_k(k, t.numel())
    return _dispersion_sorted(t, k, check_q(q))


def structure_factor(theta: torch.Tensor, k: int, q: float = 2) -> float:
    """``S = sqrt(1 - eps^2) / (sqrt(k) * (1 - beta))`` with ``eps = eps_2(theta, k)`` and
    ``beta = beta_2(theta, k)`` (for general ``q``: ``(1 - eps^q)^(1/q) / (k^(1/q) (1 - beta))``).

    Algebraically ``S = theta_(1) / ||theta||_q`` for every ``k``: the structure part of the
    structure x scale identities ``||W||_2 = S_sigma ||W||_F`` (theta = sigma) and
    ``||W||_inf = nu_(1) = S_nu ||nu||_2 <= S_nu sqrt(d) ||W||_F`` (theta = row l1 norms)."""
    t = _as_theta(theta)
    k = _check_k(k, t.numel())
    q = check_q(q)
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
    q = check_q(q)
    curve = _residual_curve(t, q)
    if eps is not None:
        k = _first_k(curve, check_eps(eps))
    k = _check_k(k, t.numel())
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
        theta_norm=float(t[0] * torch.linalg.vector_norm(t / t[0], ord=q)),  # scaled: no overflow
    )


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


# --------------------------------------------------------------------------- helpers


def _as_theta(theta: torch.Tensor, name: str = "theta") -> torch.Tensor:
    """Validated, float64, sorted-descending copy of a non-negative 1-D vector."""
    t = as_real_tensor(theta, name).detach()
    if t.ndim != 1 or t.numel() == 0:
        raise InvalidArgumentError(f"{name} must be a non-empty 1-D vector, got shape {tuple(t.shape)}.")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise InvalidArgumentError(f"{name} has non-finite entries (NaN or inf); check the weights.")
    if (t < 0).any():
        raise InvalidArgumentError(f"{name} must be non-negative (norms or singular values).")
    return torch.sort(t, descending=True).values


def _check_k(k: int, n: int) -> int:
    k = check_count(k, "k", minimum=-(2**63))  # a whole number; its range is checked next
    if not 1 <= k <= n:
        raise InvalidArgumentError(f"k must be in [1, {n}] for a vector of length {n}, got {k}.", argument="k")
    return k


def _residual_curve(theta_sorted: torch.Tensor, q: float) -> torch.Tensor:
    """``eps_q(theta, k)`` for every ``k = 1..n`` at once (vectorized, float64).

    ``theta`` is scaled by its largest entry first (no overflow near the float64 maximum).
    For a large ``q`` the powers ``(theta_i / ||theta||_q)^q`` of entries well below the top
    underflow to 0 (``(2/3)^2000``), which would make the residual 0; then the tails are
    summed in log space (``logcumsumexp``), exactly as the definition reads."""
    if theta_sorted[0] == 0:
        raise InvalidArgumentError("theta is all zeros: compressibility is undefined for a zero weight.")
    scaled = theta_sorted / theta_sorted[0]
    total = torch.linalg.vector_norm(scaled, ord=q)
    if math.isinf(q):
        tail = torch.cat([scaled[1:], scaled.new_zeros(1)])  # max of the tail
        return tail / total
    powers = (scaled / total) ** q
    if bool(((powers == 0) & (scaled > 0)).any()):
        return _residual_curve_log(scaled, q)
    # tail[k-1] = sum_{i > k} powers_i, summed from the small end (exactly 0 at k = n)
    suffix = torch.flip(torch.cumsum(torch.flip(powers, [0]), 0), [0])
    tail = torch.cat([suffix[1:], powers.new_zeros(1)])
    return tail.clamp_min(0) ** (1.0 / q)


def _residual_curve_log(scaled: torch.Tensor, q: float) -> torch.Tensor:
    """The residual curve from ``log ||theta_{>k}||_q = logsumexp_{i>k}(q log theta_i) / q``."""
    logs = q * torch.log(scaled)  # log 0 = -inf: a zero entry adds nothing
    suffix = torch.flip(torch.logcumsumexp(torch.flip(logs, [0]), 0), [0])  # suffix[j] = lse(logs[j:])
    tail = torch.exp((suffix[1:] - suffix[0]) / q)
    return torch.cat([tail, scaled.new_zeros(1)])


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


def _first_k(curve: torch.Tensor, eps: float) -> int:
    """The smallest ``k`` with ``curve[k - 1] <= eps``, with a tiny slack for round-off
    (``eps_q(theta, n)`` is exactly 0 in exact arithmetic, so ``k = n`` always qualifies)."""
    return int(torch.nonzero(curve <= float(eps) + 1e-12)[0]) + 1
