"""Compressibility, dispersion, operator norms, alignment, Lipschitz and gap bounds.

Definitions follow DESIGN.md ("Definitions"); ``q`` defaults to 2. For a non-negative
vector ``theta`` of length ``n`` sorted descending, ``theta_k`` keeps its ``k`` largest
entries.
"""

from __future__ import annotations

import math

import torch

from robustprune.errors import InvalidArgumentError

__all__ = ["relative_residual", "k_for_eps", "dispersion"]


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


def _residual_curve(theta_sorted: torch.Tensor, q: float) -> torch.Tensor:
    """``eps_q(theta, k)`` for every ``k = 1..n`` at once (vectorized, float64)."""
    total = torch.linalg.vector_norm(theta_sorted, ord=q)
    if total == 0:
        raise InvalidArgumentError("theta is all zeros: compressibility is undefined for a zero weight.")
    if math.isinf(q):
        tail = torch.cat([theta_sorted[1:], theta_sorted.new_zeros(1)])  # max of the tail
        return tail / total
    powers = (theta_sorted / total) ** q  # scale first: no overflow
    tail = powers.sum() - torch.cumsum(powers, 0)
    return tail.clamp_min(0) ** (1.0 / q)


def relative_residual(theta: torch.Tensor, k: int, q: float = 2) -> float:
    """``eps_q(theta, k) = ||theta - theta_k||_q / ||theta||_q``; scale invariant, in [0, 1)."""
    t = _as_theta(theta)
    k = _check_k(k, t.numel())
    return float(_residual_curve(t, _check_q(q))[k - 1])


def k_for_eps(theta: torch.Tensor, eps: float, q: float = 2) -> int:
    """``k_q(theta, eps) = min{k >= 1 : eps_q(theta, k) <= eps}``.

    ``eps`` must be in (0, 1); ``k = n`` always qualifies (the residual is 0)."""
    if not 0 < float(eps) < 1:
        raise InvalidArgumentError(f"eps must be in (0, 1), got {eps}.")
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
    q = _check_q(q)
    top = t[:k]
    if top[0] == 0:
        raise InvalidArgumentError("theta is all zeros: dispersion is undefined for a zero weight.")
    ratio = torch.linalg.vector_norm(top / top[0], ord=q) / (1.0 if math.isinf(q) else k ** (1.0 / q))
    return float(min(1.0, max(0.0, 1.0 - float(ratio))))
