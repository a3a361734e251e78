"""Pruning inside :func:`robustprune.train.fit`: the steps of a
:class:`~robustprune.pruners.schedules.ScheduledPruning`, executed between epochs.

A step at epoch ``e`` runs before epoch ``e`` trains: it counts the model's current MACs,
solves the step's pruner to the step's target (a fraction of the *original* MACs, counted
when ``fit`` started), plans on rank 0 and broadcasts the kept units to every rank (so all
ranks prune identically, whatever the importance), applies the plan and records it in
``model.robustprune_history``. ``fit`` then rebuilds the optimizer and the scheduler over
the new parameters. A step whose target is not below the current MACs is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from robustprune import distributed
from robustprune._inputs import Inputs
from robustprune._modes import module_modes, restore_modes
from robustprune.errors import PruningError
from robustprune.pruners import Plan, PruningReport, count_macs_params
from robustprune.pruners.schedules import ScheduledPruning, schedule_targets

__all__ = ["PruningDriver", "ShiftedScheduler"]

logger = logging.getLogger(__name__)

#: a step whose target keeps at least this fraction of the current MACs prunes nothing
_NOTHING_TO_DO = 1 - 1e-9


class PruningDriver:
    """The pruning steps of one ``fit`` call: which epochs prune, and doing it."""

    def __init__(
        self, pruning: ScheduledPruning, epochs: int, net: nn.Module, example: Inputs,
        ctx: distributed.DistContext,
    ) -> None:
        self.pruning, self.example, self.ctx = pruning, example, ctx
        self.epochs_at = pruning.schedule.epochs(epochs)
        self.total_epochs = int(epochs)
        self.targets = schedule_targets(pruning.target_macs, pruning.schedule.steps)
        with torch.enable_grad():
            self.macs_original = count_macs_params(net, example)[0]
        self.reports: list[PruningReport] = []

    def lr_window(self, epoch: int) -> tuple[int, int] | None:
        """With a restarting schedule, the epochs ``(start, stop)`` of the learning-rate
        schedule that ``epoch`` trains under (from its pruning step to the next one or to
        the end); None without restarts or before the first step."""
        if not self.pruning.schedule.restart:
            return None
        starts = sorted(set(self.epochs_at))
        before = [e for e in starts if e <= epoch]
        if not before:
            return None
        after = [e for e in starts if e > before[-1]]
        return before[-1], after[0] if after else self.total_epochs

    def steps_at(self, epoch: int) -> list[int]:
        """Indices of the steps that prune before ``epoch`` (several when a short finetune
        has more steps than epochs)."""
        return [i for i, e in enumerate(self.epochs_at) if e == epoch]

    def run(self, net: nn.Module, step: int) -> PruningReport | None:
        """Prune ``net`` in place by step ``step``; its report (None: nothing to prune)."""
        with torch.enable_grad():
            current = count_macs_params(net, self.example)[0]
            target = self.targets[step] * self.macs_original / max(1, current)
            if target >= _NOTHING_TO_DO:
                logger.info("pruning step %d/%d: already at %.4f of the original MACs, nothing to prune",
                            step + 1, len(self.targets), current / self.macs_original)
                return None
            pruner = self.pruning.pruner(target)
            modes = module_modes(net)
            try:
                plan = _from_rank0(pruner.plan(net, self.example), self.ctx)
                report = pruner.apply(net, plan)
            finally:
                restore_modes(modes)
        self.reports.append(report)
        logger.info(
            "pruning step %d/%d (%s): %.4f of the original MACs kept (target %.4f)",
            step + 1, len(self.targets), self.pruning.method,
            report.macs_after / self.macs_original, self.targets[step],
        )
        return report

    def describe(self) -> dict[str, Any]:
        """Plain data for the run's result: the schedule, its epochs and the reports."""
        return {
            **self.pruning.describe(),
            "epochs_at": list(self.epochs_at),
            "targets": list(self.targets),
            "macs_original": int(self.macs_original),
            "reports": [r.to_dict() for r in self.reports],
        }


def _from_rank0(plan: Plan, ctx: distributed.DistContext) -> Plan:
    """``plan`` with every group's kept units replaced by rank 0's decision."""
    if not ctx.distributed:
        return plan
    mine = [[g.name, list(g.keep)] for g in plan.groups]
    box = [mine]
    torch.distributed.broadcast_object_list(box, src=0)
    decided = box[0]
    if [name for name, _ in decided] != [name for name, _ in mine]:
        raise PruningError(
            "The ranks traced different pruning groups (are the models identical on every rank?)."
        )
    groups = tuple(dataclasses.replace(g, keep=tuple(keep)) for g, (_, keep) in zip(plan.groups, decided))
    return dataclasses.replace(plan, groups=groups)


class ShiftedScheduler:
    """A timm scheduler that starts at update ``offset`` of the fit: ``step_update(n)``
    steps the wrapped one with ``n - offset`` (its state dict is the wrapped one's)."""

    def __init__(self, scheduler: Any, offset: int) -> None:
        self.scheduler, self.offset = scheduler, int(offset)

    def step_update(self, num_updates: int, metric: Any = None) -> None:
        self.scheduler.step_update(num_updates=max(0, num_updates - self.offset), metric=metric)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)
