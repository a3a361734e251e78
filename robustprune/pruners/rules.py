"""Channel rules: how many units each dependency group keeps at a given strength.

A rule is a small strategy object handed to
:class:`~robustprune.pruners.channel.ChannelPruner`; the pruner traces the model, scores
the groups, asks the rule for counts, keeps the ``k`` most important units of every group
(after raising ``k`` to ``min_keep`` and rounding to ``round_to``), and solves the rule's
strength in target-MACs mode. The protocol (:class:`Rule`; subclass it for the defaults):

- ``keep_counts(groups, strength) -> list[int | None]``: per group (a frozen
  :class:`~robustprune.pruners.groups.Group`: ``name``, ``layers``, ``total``, ``theta``
  float64 in the original channel order, ``order`` by decreasing ``theta``,
  ``channel_groups``, ``root_out``), the units to keep at ``strength``; None leaves the
  group untouched. Counts must never increase with strength.
- ``breakpoints(groups) -> list[float]``: every strength at which some group's count
  changes, in increasing strength (the candidates of the target-MACs search).
- ``name``: the method name in plans and reports; ``solves``: the setting key that holds
  the strength solved in target-MACs mode (``"eps"``, ``"ratio"``; None to record none);
  ``strength``: the rule's own strength, used when ``target_macs`` is None (None: the
  pruner needs ``target_macs``); ``q``: the norm of the reported ε and β.
- ``target(group, strength)``: the ε asked of a group, shown in reports (None for ratio
  rules); ``note(group, strength)``: a per-group remark; ``settings()``: the rule's
  settings as plain data, first in the pruner's settings and repr.
- ``prepare(context) -> dict | None`` (optional, default: nothing): called once per plan,
  after the groups are collected and scored and before any ``keep_counts``/``breakpoints``,
  with a :class:`PlanContext` (the model, the example inputs, the groups, ``min_keep``; in
  target-MACs mode the target and an exact ``kept_fraction(counts)``). A rule that measures
  the model (:class:`SensitivityRule`) does it here; it must not change the model. The dict it returns (plain data: the measurement's cost) is recorded in the
  plan's settings and shown in the report.

The rules of the package:

- :class:`EpsilonRule`: ``k = k_q(theta, ε)`` per group (``ε`` a float or a
  ``{module-name-glob: ε}`` dict); breakpoints are the groups' residual values
  ``eps_q(theta, j)`` (:func:`robustprune.metrics.residual_curve`, the curve ``k_for_eps``
  compares against).
- :class:`FixedRatioRule`: ``k = floor(n (1 - ratio))`` in every group.
- :class:`GlobalMagnitudeRule`: one importance threshold over all groups; of the ``N``
  units, the ``N - floor(N (1 - ratio))`` least important go, wherever they are.
- :class:`SensitivityRule`: the same global rule over robustness costs instead of
  importance: ``prepare`` measures each group's adversarial-loss increase when it is cut
  (:mod:`robustprune.pruners.sensitivity`), and the ``N - floor(N (1 - ratio))`` units with
  the least loss increase per MAC removed go.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustprune.attacks import AdversarialConfig
from robustprune.errors import InvalidArgumentError, PruningError
from robustprune.metrics import k_for_eps, residual_curve
from robustprune.pruners._checks import check_globs_match, eps_setting, match_eps
from robustprune.pruners.adversarial import (
    check_adversarial,
    check_count,
    check_data,
    check_seed,
    describe,
)
from robustprune.pruners.groups import Group
from robustprune.pruners.sensitivity import (
    Sensitivity,
    check_widths,
    fill_to_target,
    measure_sensitivity,
    removal_order,
)

__all__ = [
    "Rule",
    "PlanContext",
    "EpsilonRule",
    "FixedRatioRule",
    "GlobalMagnitudeRule",
    "SensitivityRule",
    "residual_breakpoints",
]

_SLACK = 1e-9  # floor(n * (1 - ratio)) must not lose a unit to rounding (0.7 * 10 = 6.9999...)


@dataclass(frozen=True)
class PlanContext:
    """What ``Rule.prepare`` sees: the model being planned (never to be changed), the
    example inputs the plan uses, the scored groups, the pruner's ``min_keep``, whether to
    show progress, and in target-MACs mode the target, its tolerance and
    ``kept_fraction(counts)``: the exact kept MACs fraction of per-group counts (after
    ``min_keep`` and ``round_to``), as the search counts it."""

    model: nn.Module
    inputs: Any
    groups: tuple[Group, ...]
    min_keep: int = 1
    progress: bool = False
    target_macs: float | None = None
    macs_tolerance: float = 0.01
    kept_fraction: Callable[[list[int]], float] | None = None


class Rule:
    """Base of channel rules: the protocol (module docstring) with its defaults."""

    name: str = "channel"
    solves: str | None = None
    strength: Any = None
    q: float = 2.0

    def keep_counts(self, groups: Sequence[Group], strength: Any) -> list[int | None]:
        raise NotImplementedError

    def breakpoints(self, groups: Sequence[Group]) -> list[float]:
        raise NotImplementedError

    def target(self, group: Group, strength: Any) -> float | None:
        return None

    def note(self, group: Group, strength: Any) -> str:
        return ""

    def settings(self) -> dict[str, Any]:
        return {}

    def prepare(self, context: PlanContext) -> dict[str, Any] | None:
        return None


class EpsilonRule(Rule):
    """Keep ``k_q(theta, ε)`` units per group (an all-zero group keeps 1)."""

    name = "epsilon"
    solves = "eps"

    def __init__(self, eps: float | Mapping[str, float] | None = None, q: float = 2) -> None:
        self.eps = eps_setting(eps)
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not (q >= 1 or math.isinf(q)):
            raise InvalidArgumentError(f"q must be a norm order >= 1 (or math.inf), got {q!r}.", argument="q")
        self.q = float(q)

    @property
    def strength(self) -> float | dict[str, float] | None:
        return self.eps

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "q": self.q if not math.isinf(self.q) else "inf"}

    def keep_counts(self, groups: Sequence[Group], strength: Any) -> list[int | None]:
        check_globs_match(strength, [g.layers for g in groups])
        out: list[int | None] = []
        for g in groups:
            eps = match_eps(strength, g.layers)
            if eps is None:
                out.append(None)
            elif float(g.theta.max()) <= 0:  # an all-zero group loses nothing
                out.append(1)
            else:
                out.append(k_for_eps(g.theta, eps, self.q))
        return out

    def breakpoints(self, groups: Sequence[Group]) -> list[float]:
        return residual_breakpoints((g.theta for g in groups), self.q)

    def target(self, group: Group, strength: Any) -> float | None:
        return match_eps(strength, group.layers)

    def note(self, group: Group, strength: Any) -> str:
        if isinstance(strength, Mapping) and match_eps(strength, group.layers) is None:
            return "no eps glob matched"
        return ""


class _RatioRule(Rule):
    solves = "ratio"

    def __init__(self, ratio: float | None = None) -> None:
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1):
            raise InvalidArgumentError(
                f"ratio is the fraction of channels to remove and must be in [0, 1), got {ratio!r}.",
                argument="ratio",
            )
        self.ratio = None if ratio is None else float(ratio)

    @property
    def strength(self) -> float | None:
        return self.ratio

    def settings(self) -> dict[str, Any]:
        return {"ratio": self.ratio}


class FixedRatioRule(_RatioRule):
    """Remove the fraction ``ratio`` of every group: ``k = floor(n (1 - ratio))``."""

    name = "fixed"

    def keep_counts(self, groups: Sequence[Group], strength: Any) -> list[int | None]:
        return [math.floor(g.total * (1 - float(strength)) + _SLACK) for g in groups]

    def breakpoints(self, groups: Sequence[Group]) -> list[float]:
        values = {0.0}
        for g in groups:
            values.update(1 - m / g.total for m in range(1, g.total))
        return sorted(values)


class GlobalMagnitudeRule(_RatioRule):
    """Remove the ``N - floor(N (1 - ratio))`` least important of all ``N`` units (ties: the
    higher index first within a group); scores are compared across groups as they are."""

    name = "global"

    def keep_counts(self, groups: Sequence[Group], strength: Any) -> list[int | None]:
        total = sum(g.total for g in groups)
        if total == 0:
            return []
        n_pruned = total - math.floor(total * (1 - float(strength)) + _SLACK)
        pruned = [0] * len(groups)
        for gi in _global_order(groups)[:n_pruned].tolist():
            pruned[gi] += 1
        return [g.total - p for g, p in zip(groups, pruned)]

    def breakpoints(self, groups: Sequence[Group]) -> list[float]:
        total = sum(g.total for g in groups)
        return [j / total for j in range(total)] if total else [0.0]


class SensitivityRule(_RatioRule):
    """Remove the ``N - floor(N (1 - ratio))`` units whose removal costs the least
    adversarial loss per MAC (:mod:`robustprune.pruners.sensitivity`), measured in
    ``prepare`` on ``data`` (held out) against ``adversarial``. A group keeps at least its
    smallest measured width. ``ratio`` None: solve it with ``target_macs`` (then a unit that
    would jump past the target is skipped for cheaper ones that fit, so ``ratio`` counts
    units in that order)."""

    name = "sensitivity"

    def __init__(
        self,
        data: Any,
        adversarial: AdversarialConfig,
        *,
        widths: Sequence[float] = (0.75, 0.5, 0.25, 0.1),
        n_examples: int = 128,
        seed: int = 0,
        ratio: float | None = None,
    ) -> None:
        super().__init__(ratio)
        check_data(data, "data")
        self.data = data
        self.adversarial = check_adversarial(adversarial)
        self.widths = check_widths(widths)
        self.n_examples = check_count(n_examples, "n_examples")
        self.seed = check_seed(seed)
        self.measured: Sensitivity | None = None
        self._order: list[int] = []

    def settings(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "widths": self.widths, "n_examples": self.n_examples,
                "adversarial": describe(self.adversarial), "seed": self.seed}

    def prepare(self, context: PlanContext) -> dict[str, Any]:
        self.measured = measure_sensitivity(
            context.model, context.inputs, context.groups, data=self.data, adversarial=self.adversarial,
            widths=self.widths, n_examples=self.n_examples, min_keep=context.min_keep, seed=self.seed,
            progress=context.progress,
        )
        self._order = removal_order(self.measured.groups)
        if context.target_macs is not None and context.kept_fraction is not None:
            self._order = fill_to_target(self._order, [g.total for g in context.groups], context.kept_fraction,
                                         target=context.target_macs, tolerance=context.macs_tolerance)
        m = self.measured
        return {"sensitivity_seconds": round(m.seconds, 2), "loss_evaluations": m.evaluations,
                "sensitivity_examples": m.examples, "adversarial_loss": round(m.base_loss, 4)}

    def keep_counts(self, groups: Sequence[Group], strength: Any) -> list[int | None]:
        self._check_prepared(groups)
        total = sum(g.total for g in groups)
        n_removed = min(len(self._order), total - math.floor(total * (1 - float(strength)) + _SLACK))
        removed = Counter(self._order[:n_removed])
        return [g.total - removed[i] for i, g in enumerate(groups)]

    def breakpoints(self, groups: Sequence[Group]) -> list[float]:
        self._check_prepared(groups)
        total = sum(g.total for g in groups)
        return [j / total for j in range(len(self._order) + 1)] if total else [0.0]

    def _check_prepared(self, groups: Sequence[Group]) -> None:
        m = self.measured
        if m is None or [(s.name, s.total) for s in m.groups] != [(g.name, g.total) for g in groups]:
            raise PruningError(
                "SensitivityRule has not measured these groups: it measures in prepare(context), "
                "which ChannelPruner.plan calls; use it through a ChannelPruner (or SensitivityPruner)."
            )


def residual_breakpoints(thetas: Iterable[torch.Tensor], q: float) -> list[float]:
    """Every value in (0, 1) of the residual curves ``eps_q(theta, j)`` of non-zero
    ``thetas``, increasing (``[0.5]`` when there is none): the ε at which ``k_q`` changes."""
    values: set[float] = set()
    for theta in thetas:
        if float(theta.max()) <= 0:
            continue
        curve = residual_curve(theta, q)
        values.update(float(v) for v in curve[:-1].tolist() if 0 < v < 1)
    return sorted(values) or [0.5]


def _global_order(groups: Sequence[Group]) -> torch.Tensor:
    """Group index of every unit, least important first (within a group the units go
    in reverse keep order, so each group loses exactly its lowest-ranked units)."""
    scores = torch.cat([g.theta[g.order.flip(0)] for g in groups])
    owner = torch.cat([torch.full((g.total,), i, dtype=torch.long) for i, g in enumerate(groups)])
    order = torch.sort(scores, stable=True).indices
    return owner[order]
