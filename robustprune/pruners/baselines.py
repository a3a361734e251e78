"""The usual structured-pruning baselines, on the same machinery as :class:`EpsilonPruner`.

- :class:`FixedRatioPruner`: every group keeps the same fraction of its units,
  ``k = floor(n * (1 - ratio))`` (torch-pruning's local pruning).
- :class:`GlobalMagnitudePruner`: one threshold over all groups' importance (torch-pruning's
  global pruning): of the ``N`` prunable units in total, the ``N - floor(N * (1 - ratio))``
  least important are removed, wherever they are.

Both keep at least ``min_keep`` units per group (never zero) and round up to ``round_to``,
and both accept ``target_macs`` instead of ``ratio``, so that every comparison with
ε-pruning happens at equal MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.pruners.base import ChannelPruner, _Group

__all__ = ["FixedRatioPruner", "GlobalMagnitudePruner"]

_SLACK = 1e-9  # floor(n * (1 - ratio)) must not lose a unit to rounding (0.7 * 10 = 6.9999...)


class _RatioPruner(ChannelPruner):
    def __init__(
        self,
        ratio: float | None = None,
        target_macs: float | None = None,
        importance: Callable[[Any], torch.Tensor | None] | None = None,
        round_to: int | None = None,
        min_keep: int = 1,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        *,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        super().__init__(
            importance=importance, round_to=round_to, min_keep=min_keep,
            ignored_layers=ignored_layers, target_macs=target_macs,
            macs_tolerance=macs_tolerance, progress=progress,
        )
        if (ratio is None) == (target_macs is None):
            raise InvalidArgumentError(
                "Give exactly one of ratio (the fraction of channels to remove, e.g. 0.5) and "
                f"target_macs (the fraction of MACs to keep); got ratio={ratio!r}, "
                f"target_macs={target_macs!r}."
            )
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1):
            raise InvalidArgumentError(
                f"ratio is the fraction of channels to remove and must be in [0, 1), got {ratio!r}."
            )
        self.ratio = None if ratio is None else float(ratio)

    def _setting(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "importance": repr(self.importance),
            "round_to": self.round_to,
            "min_keep": self.min_keep,
            "target_macs": self.target_macs,
        }

    def _strength(self) -> Any:
        return self.ratio

    def _solved_setting(self, param: Any) -> dict[str, Any]:
        return {"ratio": float(param)}


class FixedRatioPruner(_RatioPruner):
    """Remove the same fraction ``ratio`` of units from every group: ``k = floor(n(1 - ratio))``.

    Args:
        ratio: fraction of each group's channels to remove, in [0, 1).
        target_macs: instead of ``ratio``, the fraction of the original MACs to keep.
        importance, round_to, min_keep, ignored_layers: as for :class:`EpsilonPruner`.
    """

    method = "fixed"

    def _keep_counts(self, groups: Sequence[_Group], param: Any) -> list[int | None]:
        return [math.floor(g.total * (1 - float(param)) + _SLACK) for g in groups]

    def _candidates(self, groups: Sequence[_Group]) -> list[float]:
        values = {0.0}
        for g in groups:
            values.update(1 - m / g.total for m in range(1, g.total))
        return sorted(values)


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

    method = "global"

    def _keep_counts(self, groups: Sequence[_Group], param: Any) -> list[int | None]:
        total = sum(g.total for g in groups)
        if total == 0:
            return []
        n_pruned = total - math.floor(total * (1 - float(param)) + _SLACK)
        pruned = [0] * len(groups)
        for gi in self._global_order(groups)[:n_pruned].tolist():
            pruned[gi] += 1
        return [g.total - p for g, p in zip(groups, pruned)]

    def _candidates(self, groups: Sequence[_Group]) -> list[float]:
        total = sum(g.total for g in groups)
        return [j / total for j in range(total)] if total else [0.0]

    @staticmethod
    def _global_order(groups: Sequence[_Group]) -> torch.Tensor:
        """Group index of every unit, least important first (within a group the units go
        in reverse keep order, so each group loses exactly its lowest-ranked units)."""
        scores = torch.cat([g.theta[g.order.flip(0)] for g in groups])
        owner = torch.cat([torch.full((g.total,), i, dtype=torch.long) for i, g in enumerate(groups)])
        order = torch.sort(scores, stable=True).indices
        return owner[order]
