"""ε-targeted structured pruning: every group keeps as few channels as its own ε allows.

For a group with importance ``theta`` (length ``n``, see :mod:`robustprune.pruners.importance`),
sorted descending, the pruner keeps

    k = k_q(theta, ε) = min{k >= 1 : ||theta - theta_k||_q / ||theta||_q <= ε}

channels, rounded up so the kept width is a multiple of ``round_to``, at least
``min_keep``, never zero, and removes the rest in one pass. A layer whose energy sits in a
few channels is pruned hard; a layer whose energy is spread keeps almost everything — the
per-layer adaptivity that a fixed ratio lacks. Every group's achieved ε is at most its
target (``k`` only grows by rounding).

``target_macs=f`` solves the single global ε that keeps ``f`` of the original MACs: MACs
never increase with ε, and ``k_q`` only changes where ε crosses one of the groups'
residual values ``eps_q(theta, j)``, so the search runs over those breakpoints
(:class:`~robustprune.pruners.rules.EpsilonRule`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.pruners.channel import ChannelPruner
from robustprune.pruners.importance import ImportanceLike
from robustprune.pruners.rules import EpsilonRule

__all__ = ["EpsilonPruner"]


class EpsilonPruner(ChannelPruner):
    """Keep ``k_q(theta, ε)`` channels per dependency group.

    Args:
        eps: relative residual to allow per group, in (0, 1); or ``{module-name-glob: ε}``
            (a group takes the smallest ε among the globs matching a layer whose outputs it
            prunes; groups no glob matches are left unpruned; add ``"*"`` for a default).
        q: the norm of the residual (``q >= 1`` or ``math.inf``).
        importance: default the group ℓ2 magnitude (:class:`GroupL2Importance`, theta =
            the square root of torch-pruning's squared group norms). An :class:`Importance`
            declares its power (``theta = score ** (1 / power)``); any other callable
            ``group -> per-channel scores`` is used as theta as is, so ε is the relative
            residual of those scores: e.g. ``tp.importance.GroupTaylorImportance()``, after
            a backward pass so that gradients exist. A name: ``"l2"`` (the default); the
            adversarial Taylor importance is ``AdvTaylorImportance(data, adversarial)``.
        round_to: keep a multiple of this many channels at each group's root layer.
        min_keep: keep at least this many units per group (default 1: no layer collapse).
        ignored_layers: modules (or names) whose outputs are never pruned, besides the head.
        target_macs: instead of ``eps``, the fraction of the original MACs to keep; the
            single global ε is solved to within ``macs_tolerance`` (relative, default 1%).
    """

    def __init__(
        self,
        eps: float | Mapping[str, float] | None = None,
        q: float = 2,
        importance: ImportanceLike | str | None = None,
        round_to: int | None = None,
        min_keep: int = 1,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        target_macs: float | None = None,
        *,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        if (eps is None) == (target_macs is None):
            raise InvalidArgumentError(
                "Give exactly one of eps (the relative residual per group, e.g. eps=0.05) and "
                f"target_macs (the fraction of MACs to keep, e.g. 0.5); got eps={eps!r}, "
                f"target_macs={target_macs!r}."
            )
        super().__init__(
            EpsilonRule(eps, q), importance, round_to=round_to, min_keep=min_keep,
            ignored_layers=ignored_layers, target_macs=target_macs,
            macs_tolerance=macs_tolerance, progress=progress,
        )

    @property
    def eps(self) -> Any:
        """The validated ε: None (target-MACs mode), a float, or ``{glob: ε}``."""
        return self.rule.eps

    @property
    def q(self) -> float:
        """The norm of the residual."""
        return self.rule.q
