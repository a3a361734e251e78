"""The pruner base class: ``plan(model, example_inputs) -> Plan``, ``apply(model, plan) ->
PruningReport``; calling a pruner does both.

Every applied step is appended to ``model.robustprune_history`` (plain data, see
:mod:`robustprune.pruners.history`), which :func:`robustprune.checkpoint.save_pruned` stores
and :func:`~robustprune.pruners.history.replay_history` replays on a freshly built
architecture.
"""

from __future__ import annotations

import abc
import dataclasses
import numbers
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from robustprune._inputs import Inputs, check_bool, resolve_example_inputs
from robustprune.errors import InvalidArgumentError
from robustprune.pruners._checks import check_fraction, check_ignored, ignored_names
from robustprune.pruners.history import record_step
from robustprune.pruners.plan import Plan, PruningReport, format_value
from robustprune.pruners.support import check_prunable_model

__all__ = ["Pruner"]


class Pruner(abc.ABC):
    """Base class: ``plan(model, example_inputs) -> Plan``, ``apply(model, plan) ->
    PruningReport``; calling the pruner does both.

    ``target_macs=f`` (a fraction in (0, 1]) replaces the pruner's own strength parameter
    by the value that keeps ``f`` of the original MACs, found by a monotone search (MACs
    never increase with pruning strength, :mod:`robustprune.pruners.search`) to within
    ``macs_tolerance`` (relative, default 1%); every candidate's MACs are counted exactly by
    torch-pruning's counter on a meta-tensor clone. ``ignored_layers`` (modules or module
    names) are never pruned at their outputs, in addition to the classifier head, which is
    always ignored.

    Subclasses set ``method`` (the name in plans and reports) and ``kind`` (``"channels"``
    or ``"rank"``) and implement :meth:`plan`, :meth:`apply` and :meth:`settings`.
    """

    method: str = ""
    kind: str = "channels"

    def __init__(
        self,
        *,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        target_macs: float | None = None,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        self.ignored_layers = check_ignored(ignored_layers)
        self.target_macs = None if target_macs is None else check_fraction(target_macs, "target_macs")
        if not (isinstance(macs_tolerance, numbers.Real) and 0 < float(macs_tolerance) < 1):
            raise InvalidArgumentError(f"macs_tolerance must be in (0, 1), got {macs_tolerance!r}.",
                                       argument="macs_tolerance")
        self.macs_tolerance = float(macs_tolerance)
        self.progress = check_bool("progress", progress)

    @abc.abstractmethod
    def plan(self, model: nn.Module, example_inputs: Inputs | None = None) -> Plan:
        """Decide what to prune; never modifies ``model``."""

    @abc.abstractmethod
    def apply(self, model: nn.Module, plan: Plan) -> PruningReport:
        """Execute ``plan`` on ``model`` in place (all or nothing) and report."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The pruner's settings as plain data (for reports, reprs and recipes)."""

    def __call__(self, model: nn.Module, example_inputs: Inputs | None = None) -> PruningReport:
        start = time.perf_counter()
        plan = self.plan(model, example_inputs)
        report = self.apply(model, plan)
        return dataclasses.replace(report, seconds=time.perf_counter() - start)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={format_value(v)}" for k, v in self.settings().items() if v is not None)
        return f"{type(self).__name__}({args})"

    # helpers for subclasses -------------------------------------------------------------

    def _finish(
        self, model: nn.Module, plan: Plan, step: dict[str, Any], *, macs_after: int, params_after: int, start: float
    ) -> PruningReport:
        """Append ``step`` to ``model.robustprune_history`` (what ``save_pruned`` replays) and
        build the report of an applied plan."""
        earlier = list(getattr(model, "robustprune_history", []) or [])
        original = earlier[0].get("macs_before") if earlier else plan.macs_before
        record_step(model, {**step, "macs_before": int(plan.macs_before), "macs_after": int(macs_after)})
        return PruningReport.from_plan(
            plan, macs_after=macs_after, params_after=params_after, seconds=time.perf_counter() - start,
            macs_original=None if original is None else int(original),
        )

    def _resolve_inputs(self, model: nn.Module, example_inputs: Inputs | None) -> Inputs:
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        check_prunable_model(model, channels=self.kind == "channels")
        return resolve_example_inputs(model, example_inputs)

    def _ignored_names(self, model: nn.Module) -> list[str]:
        """Names of the ignored modules (the classifier head included), validated."""
        return ignored_names(model, self.ignored_layers)
