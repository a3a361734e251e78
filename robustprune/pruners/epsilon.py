"""ε-targeted structured pruning: every group keeps as few channels as its own ε allows.

For a group with importance ``theta`` (length ``n``, see :mod:`robustprune.pruners.base`),
sorted descending, the pruner keeps

    k = k_q(theta, ε) = min{k >= 1 : ||theta - theta_k||_q / ||theta||_q <= ε}

channels, rounded up so the kept width is a multiple of ``round_to``, at least
``min_keep``, never zero, and removes the rest in one pass. A layer whose energy sits in a
few channels is pruned hard; a layer whose energy is spread keeps almost everything — the
per-layer adaptivity that a fixed ratio lacks. Every group's achieved ε is at most its
target (``k`` only grows by rounding).

``target_macs=f`` solves the single global ε that keeps ``f`` of the original MACs: MACs
never increase with ε, and ``k_q`` only changes where ε crosses one of the groups'
residual values ``eps_q(theta, j)``, so the search runs over those breakpoints.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.metrics import k_for_eps
from robustprune.pruners.base import (
    ChannelPruner,
    Inputs,
    Plan,
    _check_globs_match,
    _eps_setting,
    _Group,
    _match_eps,
)

__all__ = ["EpsilonPruner", "residual_curve"]


class EpsilonPruner(ChannelPruner):
    """Keep ``k_q(theta, ε)`` channels per dependency group.

    Args:
        eps: relative residual to allow per group, in (0, 1); or ``{module-name-glob: ε}``
            (a group takes the smallest ε among the globs matching a layer whose outputs it
            prunes; groups no glob matches are left unpruned; add ``"*"`` for a default).
        q: the norm of the residual (``q >= 1`` or ``math.inf``).
        importance: callable ``group -> per-channel scores``; default the group ℓ2 magnitude.
        round_to: keep a multiple of this many channels at each group's root layer.
        min_keep: keep at least this many units per group (default 1: no layer collapse).
        ignored_layers: modules (or names) whose outputs are never pruned, besides the head.
        target_macs: instead of ``eps``, the fraction of the original MACs to keep; the
            single global ε is solved to within ``macs_tolerance`` (relative, default 1%).
    """

    method = "epsilon"

    def __init__(
        self,
        eps: float | Mapping[str, float] | None = None,
        q: float = 2,
        importance: Callable[[Any], torch.Tensor | None] | None = None,
        round_to: int | None = None,
        min_keep: int = 1,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        target_macs: float | None = None,
        *,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        super().__init__(
            importance=importance, round_to=round_to, min_keep=min_keep,
            ignored_layers=ignored_layers, target_macs=target_macs,
            macs_tolerance=macs_tolerance, progress=progress,
        )
        if (eps is None) == (target_macs is None):
            raise InvalidArgumentError(
                "Give exactly one of eps (the relative residual per group, e.g. eps=0.05) and "
                f"target_macs (the fraction of MACs to keep, e.g. 0.5); got eps={eps!r}, "
                f"target_macs={target_macs!r}."
            )
        self.eps = _eps_setting(eps)
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not (q >= 1 or math.isinf(q)):
            raise InvalidArgumentError(f"q must be a norm order >= 1 (or math.inf), got {q!r}.")
        self.q = float(q)

    def plan(self, model: nn.Module, example_inputs: Inputs | None = None) -> Plan:
        plan = super().plan(model, example_inputs)
        _check_globs_match(self.eps, [g.layers for g in plan.groups])
        return plan

    def _setting(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "q": self.q if not math.isinf(self.q) else "inf",
            "importance": repr(self.importance),
            "round_to": self.round_to,
            "min_keep": self.min_keep,
            "target_macs": self.target_macs,
        }

    def _strength(self) -> Any:
        return self.eps

    def _q(self) -> float:
        return self.q

    def _eps_of(self, groups: Sequence[_Group], param: Any) -> list[float | None]:
        return [_match_eps(param, g.layers) for g in groups]

    def _keep_counts(self, groups: Sequence[_Group], param: Any) -> list[int | None]:
        out: list[int | None] = []
        for g, eps in zip(groups, self._eps_of(groups, param)):
            if eps is None:
                out.append(None)
            elif float(g.theta.max()) <= 0:  # an all-zero group loses nothing
                out.append(1)
            else:
                out.append(k_for_eps(g.theta, eps, self.q))
        return out

    def _targets(self, groups: Sequence[_Group], param: Any) -> list[float | None]:
        return self._eps_of(groups, param)

    def _note(self, g: _Group, k: int) -> str:
        if isinstance(self.eps, Mapping) and _match_eps(self.eps, g.layers) is None:
            return "no eps glob matched"
        return ""

    def _candidates(self, groups: Sequence[_Group]) -> list[float]:
        values: set[float] = set()
        for g in groups:
            if float(g.theta.max()) <= 0:
                continue
            curve = residual_curve(g.theta, self.q)
            values.update(float(v) for v in curve[:-1].tolist() if 0 < v < 1)
        # nudge up: k_q(theta, ε) is attained *at* a breakpoint, so the candidate must not
        # fall a rounding error below it
        cands = sorted({min(v * (1 + 1e-9) + 1e-12, 1 - 1e-12) for v in values})
        return cands or [0.5]

    def _solved_setting(self, param: Any) -> dict[str, Any]:
        return {"eps": float(param)}


def residual_curve(theta: torch.Tensor, q: float = 2) -> torch.Tensor:
    """``eps_q(theta, k)`` for every ``k = 1..n`` at once (float64), the vectorized form of
    :func:`robustprune.metrics.relative_residual`: with ``theta`` sorted descending,
    ``||theta - theta_k||_q / ||theta||_q``; non-increasing, ending at 0."""
    t = torch.sort(torch.as_tensor(theta, dtype=torch.float64).flatten(), descending=True).values
    total = torch.linalg.vector_norm(t, ord=q)
    if total == 0:
        raise InvalidArgumentError("theta is all zeros: the residual curve is undefined.")
    if math.isinf(q):
        return torch.cat([t[1:], t.new_zeros(1)]) / total
    powers = (t / total) ** q
    tail = (powers.sum() - torch.cumsum(powers, 0)).clamp_min(0)
    return tail ** (1.0 / q)
