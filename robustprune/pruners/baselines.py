"""The usual structured-pruning baselines, on the same machinery as :class:`EpsilonPruner`.

- :class:`FixedRatioPruner`: every group keeps the same fraction of its units,
  ``k = floor(n * (1 - ratio))`` (torch-pruning's local pruning).
- :class:`GlobalMagnitudePruner`: one threshold over all groups' importance (torch-pruning's
  global pruning): of the ``N`` prunable units in total, the ``N - floor(N * (1 - ratio))``
  least important are removed, wherever they are.

Both keep at least ``min_keep`` units per group (never zero) and round up to ``round_to``,
and both accept ``target_macs`` instead of ``ratio``, so that every comparison with
ε-pruning happens at equal MACs. The rules themselves are in :mod:`robustprune.pruners.rules`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.pruners.channel import ChannelPruner
from robustprune.pruners.importance import ImportanceLike
from robustprune.pruners.rules import FixedRatioRule, GlobalMagnitudeRule

__all__ = ["FixedRatioPruner", "GlobalMagnitudePruner"]


class _RatioPruner(ChannelPruner):
    _rule: type[FixedRatioRule] | type[GlobalMagnitudeRule]

    def __init__(
        self,
        ratio: float | None = None,
        target_macs: float | None = None,
        importance: ImportanceLike | str | None = None,
        round_to: int | None = None,
        min_keep: int = 1,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        *,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        if (ratio is None) == (target_macs is None):
            raise InvalidArgumentError(
                "Give exactly one of ratio (the fraction of channels to remove, e.g. 0.5) and "
                f"target_macs (the fraction of MACs to keep); got ratio={ratio!r}, "
                f"target_macs={target_macs!r}."
            )
        super().__init__(
            self._rule(ratio), importance, round_to=round_to, min_keep=min_keep,
            ignored_layers=ignored_layers, target_macs=target_macs,
            macs_tolerance=macs_tolerance, progress=progress,
        )

    @property
    def ratio(self) -> float | None:
        """The fraction of channels to remove (None in target-MACs mode)."""
        return self.rule.ratio


class FixedRatioPruner(_RatioPruner):
    """Remove the same fraction ``ratio`` of units from every group: ``k = floor(n(1 - ratio))``.

    Args:
        ratio: fraction of each group's channels to remove, in [0, 1).
        target_macs: instead of ``ratio``, the fraction of the original MACs to keep.
        importance, round_to, min_keep, ignored_layers: as for :class:`EpsilonPruner`.
    """

    _rule = FixedRatioRule


class GlobalMagnitudePruner(_RatioPruner):
    """One importance threshold over all groups: remove the ``N - floor(N(1 - ratio))``
    least important of all ``N`` units (ties: the higher index first within a group).

    Importance scores are compared across groups as they are (the default group ℓ2
    magnitude is not normalized per layer, as in torch-pruning's global pruning with
    ``normalizer=None``).

    Args:
        ratio: fraction of all channels to remove, in [0, 1).
        target_macs: instead of ``ratio``, the fraction of the original MACs to keep.
        importance, round_to, min_keep, ignored_layers: as for :class:`EpsilonPruner`.
    """

    _rule = GlobalMagnitudeRule
