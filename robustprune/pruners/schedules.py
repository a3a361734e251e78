"""Pruning schedules: when a pruner runs, and to which MACs target.

A schedule drives any pruner (``"epsilon"``, ``"fixed"``, ``"global"``, ``"spectral"``, ...)
to a MACs target given as a fraction of the *original* model (the model as it was when the
schedule started), in ``steps`` pruning steps whose targets are geometric in MACs
(step ``i`` of ``n`` keeps ``target ** (i / n)`` of the original MACs):

- ``one-shot``: one step, before the finetune (what ``rp.prune`` then ``fit`` does).
- ``iterative``: ``steps`` steps inside the finetune, at epochs ``0, E/n, 2E/n, ...``
  (``E`` the finetune epochs): each step is followed by an equal share of the epochs.
- ``during-training``: inside the dense (adversarial) training, the first step before
  epoch ``at`` (an epoch index, or a fraction of the training's epochs), the next ones
  ``every`` epochs later; training continues to its end (TwinRep-style "prune early, train
  long").

:func:`robustprune.train.fit` executes a :class:`ScheduledPruning` (``fit(...,
pruning=...)``): before each scheduled epoch it prunes the model, then rebuilds the
optimizer over the new parameters (momentum buffers start over) and the scheduler at the
current update, so the learning-rate curve continues where it was (or, with
``Schedule(restart=True)``, starts over for the epochs until the next step). Under DDP rank 0
decides what to keep and broadcasts it, so every rank prunes identically.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from robustprune._inputs import Inputs, check_example_inputs
from robustprune.errors import InvalidArgumentError, PruningError

__all__ = ["SCHEDULE_KINDS", "Schedule", "ScheduledPruning", "schedule_targets", "extend_history"]

ScheduleKind = Literal["one-shot", "iterative", "during-training"]
#: the schedule kinds, in the order the docs present them
SCHEDULE_KINDS: tuple[str, ...] = ("one-shot", "iterative", "during-training")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """When to prune: ``kind`` (one of :data:`SCHEDULE_KINDS`), the number of ``steps``,
    and for ``during-training`` the epoch ``at`` of the first step (an int epoch index, or a
    float fraction of the training's epochs in [0, 1)) and the epochs ``every`` between
    steps. ``one-shot`` has exactly one step. With ``restart`` the learning-rate schedule
    starts over after every pruning step and spans the epochs until the next step (or the
    end), as in prune-then-finetune cycles; without it one schedule spans the whole fit."""

    kind: ScheduleKind = "one-shot"
    steps: int = 1
    at: int | float | None = None
    every: int = 1
    restart: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise InvalidArgumentError(
                f"Unknown schedule kind {self.kind!r}; use one of {', '.join(SCHEDULE_KINDS)}.",
                argument="kind",
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 1:
            raise InvalidArgumentError(f"steps must be an integer >= 1, got {self.steps!r}.", argument="steps")
        if self.kind == "one-shot" and self.steps != 1:
            raise InvalidArgumentError(
                f"a one-shot schedule has one step, got steps={self.steps}; use kind='iterative'.",
                argument="steps",
            )
        if not isinstance(self.restart, bool):
            raise InvalidArgumentError(f"restart must be true or false, got {self.restart!r}.", argument="restart")
        if isinstance(self.every, bool) or not isinstance(self.every, numbers.Integral) or self.every < 1:
            raise InvalidArgumentError(f"every must be an integer >= 1, got {self.every!r}.", argument="every")
        if self.kind == "during-training":
            _check_at(self.at)
        elif self.at is not None:
            raise InvalidArgumentError(
                f"at applies to kind='during-training' only, got at={self.at!r} for {self.kind!r}.",
                argument="at",
            )

    def epochs(self, total_epochs: int) -> tuple[int, ...]:
        """The epoch (0-based) before which each step prunes, for a fit of
        ``total_epochs`` epochs; refused when a step falls outside the training."""
        if self.kind == "one-shot":
            return (0,)
        if self.kind == "iterative":
            return tuple(int(math.floor(i * total_epochs / self.steps)) for i in range(self.steps))
        first = self.at if isinstance(self.at, numbers.Integral) else int(round(float(self.at) * total_epochs))
        out = tuple(int(first) + i * self.every for i in range(self.steps))
        if out[-1] >= total_epochs:
            raise InvalidArgumentError(
                f"the during-training schedule prunes before epochs {list(out)}, but the "
                f"training has {total_epochs} epochs (0..{total_epochs - 1}); lower at, steps "
                "or every, or train longer.",
                argument="at",
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": int(self.steps), "at": self.at, "every": int(self.every),
                "restart": bool(self.restart)}


def schedule_targets(target_macs: float, steps: int) -> tuple[float, ...]:
    """The MACs kept after each step, as fractions of the original: geometric,
    ``target_macs ** (i / steps)`` for ``i = 1..steps`` (the last is ``target_macs``)."""
    if isinstance(target_macs, bool) or not isinstance(target_macs, numbers.Real) or not 0 < target_macs <= 1:
        raise InvalidArgumentError(
            f"target_macs is the fraction of the original MACs to keep, in (0, 1], got {target_macs!r}.",
            argument="target_macs")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise InvalidArgumentError(f"steps must be an integer >= 1, got {steps!r}.", argument="steps")
    return tuple(float(target_macs) ** ((i + 1) / steps) for i in range(steps))


@dataclass(frozen=True, kw_only=True)
class ScheduledPruning:
    """What :func:`robustprune.train.fit` prunes, and when.

    Attributes:
        target_macs: the fraction of the *original* MACs (the model when the schedule
            starts) to keep after the last step, in (0, 1].
        method: a pruning method of :data:`robustprune.pruners.PRUNERS`.
        schedule: the :class:`Schedule`.
        options: keyword arguments of the method's pruner (``importance``, ``round_to``,
            ``min_keep``, ``ignored_layers``, ...); not ``eps``/``ratio``/``target_macs``.
        example_inputs: one batch the model accepts (default: inferred, see
            :mod:`robustprune._inputs`).
    """

    target_macs: float
    method: str = "epsilon"
    schedule: Schedule = field(default_factory=Schedule)
    options: Mapping[str, Any] = field(default_factory=dict)
    example_inputs: Inputs | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        from robustprune.pruners import PRUNERS  # the registry lives in the package __init__

        value = self.target_macs
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
            raise InvalidArgumentError(
                f"target_macs is the fraction of the original MACs to keep, in (0, 1], got {value!r}.",
                argument="target_macs",
            )
        if not isinstance(self.method, str) or self.method not in PRUNERS:
            raise InvalidArgumentError(
                f"Unknown pruning method {self.method!r}; choose one of {', '.join(PRUNERS)}.",
                argument="method",
            )
        if not isinstance(self.schedule, Schedule):
            raise InvalidArgumentError(
                f"schedule must be a Schedule, got {type(self.schedule).__name__}.", argument="schedule"
            )
        if not isinstance(self.options, Mapping):
            raise InvalidArgumentError(
                f"options must be a dict of the pruner's keyword arguments, got {type(self.options).__name__}.",
                argument="options")
        if self.example_inputs is not None:
            check_example_inputs(self.example_inputs)
        clash = sorted(set(self.options) & {"eps", "ratio", "target_macs"})
        if clash:
            raise InvalidArgumentError(
                f"options must not set {', '.join(clash)}: the schedule solves target_macs per step.",
                argument="options",
            )
        self.pruner(1.0)  # the options are checked now, before anything is trained

    def pruner(self, target: float) -> Any:
        """The pruner of one step, solved to keep ``target`` of the *current* MACs."""
        from robustprune.pruners import PRUNERS

        cls = PRUNERS[self.method]
        try:
            return cls(target_macs=min(1.0, float(target)), **dict(self.options))
        except TypeError as exc:
            raise InvalidArgumentError(
                f"Bad pruner options for method {self.method!r}: {exc}.", argument="options"
            ) from exc

    def describe(self) -> dict[str, Any]:
        """Plain data for fingerprints and result rows."""
        return {
            "method": self.method,
            "target_macs": float(self.target_macs),
            "schedule": self.schedule.to_dict(),
            "options": {k: _stable_repr(v) for k, v in sorted(self.options.items())},
        }


def extend_history(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> None:
    """Replay on ``model`` the steps of ``history`` it has not had yet (its own
    ``robustprune_history`` must be a prefix of ``history``); used to resume a fit whose
    checkpoint was written after a pruning step."""
    from robustprune.pruners.history import replay_history

    mine = list(getattr(model, "robustprune_history", []) or [])
    saved = [dict(s) for s in history]
    if saved[: len(mine)] != mine:
        raise PruningError(
            "The checkpoint's pruning history does not continue this model's: it was pruned "
            "differently. Resume with the model the run started from, or use another checkpoint_dir."
        )
    if len(saved) > len(mine):
        replay_history(model, saved[len(mine):])
    model.robustprune_history = saved


def _stable_repr(value: Any) -> str:
    """``repr`` without memory addresses (a DataLoader's repr changes every process)."""
    text = repr(value)
    return type(value).__name__ if " at 0x" in text else text


def _check_at(at: Any) -> None:
    if isinstance(at, bool) or at is None:
        ok = False
    elif isinstance(at, numbers.Integral):
        ok = at >= 0
    else:
        ok = isinstance(at, numbers.Real) and 0 <= float(at) < 1
    if not ok:
        raise InvalidArgumentError(
            "a during-training schedule needs at = the epoch of the first pruning step (an "
            f"integer >= 0) or a fraction of the training's epochs in [0, 1), got {at!r}.",
            argument="at",
        )
