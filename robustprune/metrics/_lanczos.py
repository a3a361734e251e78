"""The Lanczos-accelerated power iteration behind every l2 operator norm of a convolution,
every conv alignment and the audit's top input direction.

Deterministic: the start vector is drawn from a local generator seeded with
:data:`START_SEED` and never touches the global RNG. The tridiagonal eigenproblem is solved
in float64; the iterates stay in the operator's own dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

__all__ = [
    "POWER_TOL",
    "ALIGNMENT_TOL",
    "START_SEED",
    "power_iteration",
    "orthogonalize",
    "start_vector",
]

logger = logging.getLogger(__name__)

#: relative tolerance of the power iterations for operator norms (DESIGN: 1e-4 relative)
POWER_TOL = 1e-4
#: relative tolerance of the power iterations through composite operators (alignment is a
#: ratio reported to 3-4 digits; each step costs a batch of forward and adjoint convolutions)
ALIGNMENT_TOL = 1e-3
#: seed of the local generator of start vectors (and of alignment's elementwise probe)
START_SEED = 0
#: DGKS re-orthogonalization threshold (see :func:`orthogonalize`)
_DGKS = 1 / math.sqrt(2)


def power_iteration(
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
    (full reorthogonalization, see :func:`orthogonalize`; float64 tridiagonal eigenproblem)
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
        w, beta = orthogonalize(w, basis[:, : step + 1])
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


def orthogonalize(w: torch.Tensor, span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def start_vector(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The deterministic start vector of a power iteration: standard normal of ``shape``,
    drawn in float32 from a local generator, on ``like``'s device and in its dtype."""
    g = torch.Generator().manual_seed(START_SEED)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=like.device, dtype=like.dtype)
