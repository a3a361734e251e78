"""Pruner base classes: ``plan(model, example_inputs) -> Plan``, ``apply(model, plan) -> PruningReport``.

All channel surgery goes through torch-pruning 1.6.1's ``DependencyGraph`` (coupled channels
of residual adds, BatchNorm, concatenations, depthwise convolutions, attention heads): our
code decides *which* channels go, torch-pruning removes them.

Per dependency group the importance vector ``theta`` is the group ℓ2 magnitude,
``theta_i = sqrt(mean_l ||w_{l,i}||_2^2)`` over the coupled layers ``l`` (the square root
of torch-pruning's ``GroupMagnitudeImportance(p=2, normalizer=None)``, averaged over channel
groups such as attention heads). The square root keeps the ranking of torch-pruning's score
and makes ``eps_2(theta, k)`` exactly the relative Frobenius norm of the group's parameters
that pruning removes (for a single layer: ``||W - W_k||_F / ||W||_F``, as in the spectral
case).

A model is never left half-pruned. ``plan`` never touches the model: it traces a
*structural clone* whose parameters are meta tensors (shapes only, so tracing and MACs
counting cost no arithmetic), then swaps the model's own parameter objects into the clone
to score channels. ``apply`` prunes that clone (torch-pruning creates new parameters and
never writes into the old ones), checks the result with a forward pass, and only then
transplants the new parameters and widths into the model in one step. The model's
train/eval mode and ``requires_grad`` flags are untouched. Pruning replaces Parameter
objects: rebuild the optimizer (and any EMA) afterwards.

Every applied step is appended to ``model.robustprune_history`` (plain data: torch-pruning's
pruning history, spectral ranks), which :func:`robustprune.checkpoint.save_pruned` stores
and :func:`replay_history` replays on a freshly built architecture.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import fnmatch
import itertools
import logging
import math
import numbers
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils import op_counter
from tqdm.auto import tqdm

from robustprune.errors import (
    InvalidArgumentError,
    ModelNotSupportedError,
    PruningError,
    RobustPruneError,
)
from robustprune.layers import LowRankLinear, classifier_head, prunable_layers
from robustprune.metrics import dispersion, relative_residual
from robustprune.models import model_spec

__all__ = [
    "GroupPlan",
    "Plan",
    "ReportRow",
    "PruningReport",
    "Pruner",
    "ChannelPruner",
    "GroupL2Importance",
    "count_macs_params",
    "infer_example_inputs",
    "replay_history",
]

logger = logging.getLogger(__name__)

Inputs = torch.Tensor | tuple[torch.Tensor, ...]

#: module types whose output channels root a dependency group
ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class GroupPlan:
    """What happens to one dependency group (channels) or one layer (spectral).

    ``name`` is the group's root layer (for attention, the output projection whose inputs
    carry the head dimensions), ``layers`` the Linear/Conv layers whose outputs shrink,
    ``total`` the number of prunable units ``n`` (per channel group: attention heads and
    grouped convolutions prune the same unit in every group), ``keep`` the kept unit indices
    (sorted), ``eps`` the achieved ``eps_q(theta, k)`` and ``beta`` the dispersion
    ``beta_q(theta, k)`` of the kept set, ``target`` the ε asked for (None for ratio-based
    pruners). For the spectral pruner a unit is a singular direction and ``keep`` is
    ``range(rank)``.
    """

    name: str
    layers: tuple[str, ...]
    total: int
    keep: tuple[int, ...]
    eps: float
    beta: float
    target: float | None = None
    note: str = ""
    root_out: bool = True
    channel_groups: int = 1

    @property
    def kept(self) -> int:
        return len(self.keep)

    @property
    def pruned_units(self) -> tuple[int, ...]:
        kept = set(self.keep)
        return tuple(i for i in range(self.total) if i not in kept)

    def prune_indices(self) -> list[int]:
        """Indices to remove, relative to the root layer's current width (one per unit and
        channel group), sorted unique Python ints as torch-pruning expects."""
        units = self.pruned_units
        return sorted(u + g * self.total for g in range(self.channel_groups) for u in units)

    def row(self) -> ReportRow:
        return ReportRow(self.name, self.layers, self.kept, self.total, self.target, self.eps, self.beta, self.note)


@dataclass(frozen=True)
class ReportRow:
    """One line of a :class:`PruningReport`: ``kept``/``total`` units, target and achieved ε, β."""

    name: str
    layers: tuple[str, ...]
    kept: int
    total: int
    target: float | None
    eps: float
    beta: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": list(self.layers),
            "kept": self.kept,
            "total": self.total,
            "target_eps": self.target,
            "eps": self.eps,
            "beta": self.beta,
            "note": self.note,
        }


@dataclass(frozen=True)
class Plan:
    """A validated pruning decision for one model; ``Pruner.apply(model, plan)`` executes it.

    ``kind`` is ``"channels"`` (structured channel pruning) or ``"rank"`` (spectral).
    ``macs_before``/``params_before`` are torch-pruning's counts of the dense model;
    ``macs_planned`` is the predicted count after pruning when it was computed (target-MACs
    mode). The plan also caches the traced clone so that ``apply`` does not trace again.
    """

    method: str
    kind: str
    setting: dict[str, Any]
    groups: tuple[GroupPlan, ...]
    macs_before: int
    params_before: int
    macs_planned: int | None = None
    example_inputs: Any = field(default=None, repr=False, compare=False)
    output_signature: Any = field(default=None, repr=False, compare=False)
    _cache: Any = field(default=None, repr=False, compare=False)

    @property
    def kept_units(self) -> int:
        return sum(g.kept for g in self.groups)

    @property
    def total_units(self) -> int:
        return sum(g.total for g in self.groups)


@dataclass(frozen=True)
class PruningReport:
    """What a pruner did: per-group rows and torch-pruning's MACs/params before and after."""

    method: str
    setting: dict[str, Any]
    rows: tuple[ReportRow, ...]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    seconds: float = 0.0

    @property
    def macs_kept(self) -> float:
        """``macs_after / macs_before``."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_kept(self) -> float:
        """``params_after / params_before``."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable summary (rows without the kept indices)."""
        return {
            "method": self.method,
            "setting": _plain(self.setting),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_kept": self.macs_kept,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_kept": self.params_kept,
            "seconds": self.seconds,
            "rows": [r.to_dict() for r in self.rows],
        }

    def _header(self) -> str:
        setting = ", ".join(
            f"{k}={_short(v)}" for k, v in self.setting.items() if v is not None and k != "ignored_layers"
        )
        return (
            f"{self.method} pruning ({setting})\n"
            f"MACs {_human(self.macs_before)} -> {_human(self.macs_after)} ({self.macs_kept:.1%}), "
            f"params {_human(self.params_before)} -> {_human(self.params_after)} ({self.params_kept:.1%})"
        )

    def _table(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            name = r.name if len(r.layers) <= 1 else f"{r.name} (+{len(r.layers) - 1} coupled)"
            out.append(
                [
                    name,
                    f"{r.kept}/{r.total}",
                    "-" if r.target is None else f"{r.target:.4g}",
                    f"{r.eps:.4f}",
                    f"{r.beta:.4f}",
                    r.note,
                ]
            )
        return out

    def __str__(self) -> str:
        header = ["group", "kept", "target ε", "ε", "β", "note"]
        rows = self._table()
        if not any(r[-1] for r in rows):
            header, rows = header[:-1], [r[:-1] for r in rows]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = [self._header(), ""]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        header = ["group", "kept", "target ε", "ε", "β", "note"]
        lines = [self._header().replace("\n", "  \n"), "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * 4 + ["---"]) + "|")
        for r in self._table():
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        return "\n".join(lines)


# --------------------------------------------------------------------------- importance


class GroupL2Importance:
    """Default importance: ``theta_i = sqrt(mean over coupled layers of ||w_{l,i}||_2^2)``.

    Returns per-channel *squared* scores from torch-pruning's
    ``GroupMagnitudeImportance(p=2, normalizer=None)``; the pruner averages them over channel
    groups (heads) and takes the square root. Recognised by :class:`ChannelPruner` through
    ``squared = True``.
    """

    squared = True

    def __init__(self) -> None:
        self._tp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)

    def __call__(self, group: Any) -> torch.Tensor | None:
        return self._tp(group)

    def __repr__(self) -> str:
        return "GroupL2Importance()"


# --------------------------------------------------------------------------- public utilities


def count_macs_params(model: nn.Module, example_inputs: Inputs) -> tuple[int, int]:
    """``(MACs, params)`` per example by torch-pruning's counter
    (``tp.utils.count_ops_and_params``), run on a meta-tensor clone so that counting costs no
    arithmetic (identical numbers: the counter only reads shapes); falls back to counting
    on a real copy for models that cannot run on the meta device."""
    inputs = _check_inputs(example_inputs)
    if _prefer_meta(model, inputs):
        try:
            macs, params, _ = _clone_count(model, inputs, meta=True)
            return macs, params
        except Exception:  # a model with value-dependent control flow: count for real
            logger.debug("meta-device MACs count failed; counting on a real copy", exc_info=True)
    try:
        macs, params, _ = _clone_count(model, inputs, meta=False)
    except Exception as exc:
        raise InvalidArgumentError(
            f"Cannot count MACs: the model does not accept example inputs of shape "
            f"{_shape_str(inputs)} ({type(exc).__name__}: {_first_line(exc)})."
        ) from exc
    return int(round(macs)), int(params)


def infer_example_inputs(model: nn.Module) -> torch.Tensor:
    """A single example input for ``model``, inferred from (in order): the input shape
    recorded by :func:`robustprune.models.create_model`, a timm model's patch embedding
    or ``pretrained_cfg["input_size"]``, torchvision classifiers (3x224x224), a model whose
    first layer is a Linear (``in_features``). Raises when none applies."""
    shape = _infer_input_shape(model)
    if shape is None:
        raise InvalidArgumentError(
            f"Cannot infer example inputs for {type(model).__name__}: it was not built by "
            "robustprune.models.create_model, is not a timm or torchvision classifier, and its "
            "first layer is not a Linear. Pass example_inputs, e.g. "
            "example_inputs=torch.rand(1, 3, 32, 32)."
        )
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None and not param.is_meta else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    return torch.rand((1, *shape), generator=gen).to(device=device, dtype=dtype)


def replay_history(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Re-apply recorded pruning steps (``model.robustprune_history``) to a freshly built
    model of the same architecture, in order; the weights are then loaded from a state
    dict. Channel steps replay torch-pruning's pruning history; spectral steps rebuild the
    factorized layers."""
    from robustprune.pruners.spectral import replay_spectral_step

    for i, step in enumerate(history):
        kind = step.get("kind") if isinstance(step, Mapping) else None
        if kind == "channels":
            _replay_channel_step(model, step)
        elif kind == "spectral":
            replay_spectral_step(model, step)
        else:
            raise InvalidArgumentError(
                f"Pruning history step {i} has unknown kind {kind!r}; expected 'channels' or "
                "'spectral'. Was the history written by a newer robustprune?"
            )
    model.robustprune_history = [dict(s) for s in history]
    return model


# --------------------------------------------------------------------------- pruner base


class Pruner(abc.ABC):
    """Base class: ``plan(model, example_inputs) -> Plan``, ``apply(model, plan) ->
    PruningReport``; calling the pruner does both.

    ``target_macs=f`` (a fraction in (0, 1]) replaces the pruner's own strength parameter
    by the value that keeps ``f`` of the original MACs, found by a monotone search (MACs
    never increase with pruning strength) to within ``macs_tolerance`` (relative, default
    1%); every candidate's MACs are counted exactly by torch-pruning's counter on a
    meta-tensor clone. ``ignored_layers`` (modules or module names) are never pruned at
    their outputs, in addition to the classifier head, which is always ignored.
    """

    method: ClassVar[str] = ""
    kind: ClassVar[str] = "channels"

    def __init__(
        self,
        *,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        target_macs: float | None = None,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        self.ignored_layers = _check_ignored(ignored_layers)
        self.target_macs = None if target_macs is None else _check_fraction(target_macs, "target_macs")
        if not (isinstance(macs_tolerance, numbers.Real) and 0 < float(macs_tolerance) < 1):
            raise InvalidArgumentError(f"macs_tolerance must be in (0, 1), got {macs_tolerance!r}.")
        self.macs_tolerance = float(macs_tolerance)
        self.progress = bool(progress)

    # public API -----------------------------------------------------------------------

    @abc.abstractmethod
    def plan(self, model: nn.Module, example_inputs: Inputs | None = None) -> Plan:
        """Decide what to prune; never modifies ``model``."""

    @abc.abstractmethod
    def apply(self, model: nn.Module, plan: Plan) -> PruningReport:
        """Execute ``plan`` on ``model`` in place (all or nothing) and report."""

    def __call__(self, model: nn.Module, example_inputs: Inputs | None = None) -> PruningReport:
        start = time.perf_counter()
        plan = self.plan(model, example_inputs)
        report = self.apply(model, plan)
        return _with_seconds(report, time.perf_counter() - start)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self._setting().items() if v is not None)
        return f"{type(self).__name__}({args})"

    # hooks for subclasses -------------------------------------------------------------

    @abc.abstractmethod
    def _setting(self) -> dict[str, Any]:
        """The pruner's settings as plain data (for reports and recipes)."""

    # shared helpers -------------------------------------------------------------------

    @staticmethod
    def _finish(
        model: nn.Module, plan: Plan, step: dict[str, Any], macs_after: int, params_after: int, start: float
    ) -> PruningReport:
        """Append ``step`` to ``model.robustprune_history`` (what ``save_pruned`` replays) and
        build the report of an applied plan."""
        model.robustprune_history = [*list(getattr(model, "robustprune_history", []) or []), step]
        return PruningReport(
            method=plan.method,
            setting=dict(plan.setting),
            rows=tuple(g.row() for g in plan.groups),
            macs_before=plan.macs_before,
            macs_after=macs_after,
            params_before=plan.params_before,
            params_after=params_after,
            seconds=time.perf_counter() - start,
        )

    def _resolve_inputs(self, model: nn.Module, example_inputs: Inputs | None) -> Inputs:
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if example_inputs is None:
            return infer_example_inputs(model)
        return _check_inputs(example_inputs)

    def _ignored_names(self, model: nn.Module) -> list[str]:
        """Names of the ignored modules (the classifier head included), validated."""
        names_by_id = {id(m): n for n, m in model.named_modules()}
        out: list[str] = []
        for item in self.ignored_layers:
            if isinstance(item, str):
                try:
                    model.get_submodule(item)
                except AttributeError as exc:
                    raise InvalidArgumentError(
                        f"ignored_layers names '{item}', but the model has no such module."
                    ) from exc
                out.append(item)
            elif id(item) in names_by_id:
                out.append(names_by_id[id(item)])
            else:
                raise InvalidArgumentError(
                    f"ignored_layers contains a {type(item).__name__} that is not a submodule of "
                    "this model; pass modules of the model being pruned (e.g. [model.fc]) or their "
                    "names."
                )
        head = classifier_head(model)
        if head is not None and id(head) in names_by_id:
            out.append(names_by_id[id(head)])
        return list(dict.fromkeys(out))

    def _search(
        self,
        candidates: Sequence[float],
        evaluate: Callable[[float], float],
    ) -> tuple[float, float]:
        """The candidate whose kept-MACs fraction is closest to ``target_macs``.

        ``candidates`` are ordered by increasing pruning strength, so ``evaluate`` (the
        kept fraction) is non-increasing along them. Alternates interpolation and
        bisection steps on the index; stops once within a quarter of the tolerance."""
        target, tol = float(self.target_macs), self.macs_tolerance
        cache: dict[int, float] = {}
        bar = tqdm(desc=f"{self.method}: solving target_macs={target:g}", unit="eval",
                   disable=not self.progress, leave=False)

        def f(i: int) -> float:
            if i not in cache:
                cache[i] = evaluate(candidates[i])
                bar.update(1)
                bar.set_postfix(kept=f"{cache[i]:.4f}")
            return cache[i]

        try:
            lo, hi = 0, len(candidates) - 1
            if f(hi) > target * (1 + tol):
                raise PruningError(
                    f"target_macs={target:g} is unreachable with {type(self).__name__}: even the "
                    f"strongest setting keeps {f(hi):.4f} of the MACs (ignored layers, the "
                    "classifier head and min_keep bound it). Ask for a larger target_macs or "
                    "ignore fewer layers."
                )
            if f(lo) > target:
                step = 0
                while hi - lo > 1:
                    f_lo, f_hi = f(lo), f(hi)
                    if step % 2 == 0 and f_lo > f_hi:
                        mid = lo + int(round((f_lo - target) / (f_lo - f_hi) * (hi - lo)))
                        mid = min(max(mid, lo + 1), hi - 1)
                    else:
                        mid = (lo + hi) // 2
                    step += 1
                    if abs(f(mid) - target) <= tol * target / 4:
                        lo = hi = mid
                        break
                    if f(mid) > target:
                        lo = mid
                    else:
                        hi = mid
            best = min(cache, key=lambda i: (abs(cache[i] - target), i))
        finally:
            bar.close()
        if abs(cache[best] - target) > tol * target:
            logger.warning(
                "%s: the closest achievable MACs fraction is %.4f for target_macs=%.4f (the "
                "groups are too coarse to hit it within %.1f%%).",
                type(self).__name__, cache[best], target, 100 * tol,
            )
        logger.info("%s: target_macs=%.4f -> parameter %.6g keeps %.4f of the MACs (%d evaluations)",
                    type(self).__name__, target, candidates[best], cache[best], len(cache))
        return float(candidates[best]), cache[best]


# --------------------------------------------------------------------------- channel pruner


@dataclass
class _Group:
    """A dependency group as traced on the plan's clone."""

    root_name: str
    root_out: bool
    layers: tuple[str, ...]
    channel_groups: int
    theta: torch.Tensor  # float64, length n, original channel order
    order: torch.Tensor  # stable argsort, descending theta

    @property
    def total(self) -> int:
        return int(self.theta.numel())


@dataclass
class _Trace:
    """Everything ``plan`` learns from one trace of the model."""

    clone: nn.Module
    graph: Any  # tp.DependencyGraph on ``clone``
    groups: list[_Group]
    macs: int
    params: int
    signature: Any
    meta: bool  # whether shape-only (meta) forwards work and pay off for this model


class _ChannelCache:
    """The traced clone of a plan, reusable once by ``apply`` on the same, unchanged model."""

    def __init__(self, model: nn.Module, trace: _Trace) -> None:
        self._model = weakref.ref(model)
        self._fingerprint = _fingerprint(model)
        self._trace: _Trace | None = trace

    def take(self, model: nn.Module) -> _Trace | None:
        trace, self._trace = self._trace, None
        if trace is None or self._model() is not model or _fingerprint(model) != self._fingerprint:
            return None
        return trace


class ChannelPruner(Pruner):
    """Structured channel pruning through torch-pruning's DependencyGraph.

    Subclasses decide how many units ``k`` each group keeps (``_keep_counts``); this class
    keeps the ``k`` most important units of every group (``theta`` descending, ties to the
    lower index), at least ``min_keep`` and never zero, rounded up so that the root layer's
    kept width is a multiple of ``round_to``.
    """

    kind: ClassVar[str] = "channels"

    def __init__(
        self,
        *,
        importance: Callable[[Any], torch.Tensor | None] | None = None,
        round_to: int | None = None,
        min_keep: int = 1,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        target_macs: float | None = None,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        super().__init__(
            ignored_layers=ignored_layers, target_macs=target_macs,
            macs_tolerance=macs_tolerance, progress=progress,
        )
        if importance is not None and not callable(importance):
            raise InvalidArgumentError(
                "importance must be a callable group -> per-channel scores (e.g. "
                f"tp.importance.GroupTaylorImportance()), got {type(importance).__name__}."
            )
        self.importance = importance if importance is not None else GroupL2Importance()
        if round_to is not None and (not _is_int(round_to) or round_to < 1):
            raise InvalidArgumentError(f"round_to must be a positive integer or None, got {round_to!r}.")
        if not _is_int(min_keep) or min_keep < 1:
            raise InvalidArgumentError(f"min_keep must be an integer >= 1, got {min_keep!r}.")
        self.round_to = None if round_to is None else int(round_to)
        self.min_keep = int(min_keep)

    # subclass hooks -------------------------------------------------------------------

    @abc.abstractmethod
    def _keep_counts(self, groups: Sequence[_Group], param: Any) -> list[int | None]:
        """Units each group keeps at strength ``param`` before ``min_keep``/``round_to``
        (None: leave the group untouched)."""

    @abc.abstractmethod
    def _strength(self) -> Any:
        """The pruner's own strength parameter (ε or ratio) when ``target_macs`` is None."""

    @abc.abstractmethod
    def _candidates(self, groups: Sequence[_Group]) -> list[float]:
        """Every strength value at which some group's count changes, increasing strength."""

    def _targets(self, groups: Sequence[_Group], param: Any) -> list[float | None]:
        """The ε target shown per group (None for ratio-based pruners)."""
        return [None] * len(groups)

    def _q(self) -> float:
        return 2.0

    def _note(self, g: _Group, k: int) -> str:
        return ""

    def _solved_setting(self, param: Any) -> dict[str, Any]:
        """Setting entries describing the solved strength in target-MACs mode."""
        return {}

    # plan / apply ---------------------------------------------------------------------

    def plan(self, model: nn.Module, example_inputs: Inputs | None = None) -> Plan:
        inputs = self._resolve_inputs(model, example_inputs)
        ignored = self._ignored_names(model)
        trace = _trace_model(model, inputs, ignored, self.importance)
        groups = trace.groups
        macs_planned = None
        if self.target_macs is None:
            param = self._strength()
        else:
            def kept_fraction(p: float) -> float:
                counts = self._final_counts(groups, self._keep_counts(groups, p))
                return _meta_channel_macs(model, inputs, groups, counts, trace) / trace.macs

            param, fraction = self._search(self._candidates(groups), kept_fraction)
            macs_planned = int(round(fraction * trace.macs))
        counts = self._final_counts(groups, self._keep_counts(groups, param))
        targets = self._targets(groups, param)
        plans = tuple(self._group_plan(g, k, t) for g, k, t in zip(groups, counts, targets))
        setting = {**self._setting(), **(self._solved_setting(param) if self.target_macs is not None else {})}
        setting["ignored_layers"] = ignored
        setting["example_input_shape"] = _shape_list(inputs)
        return Plan(
            method=self.method,
            kind=self.kind,
            setting=setting,
            groups=plans,
            macs_before=trace.macs,
            params_before=trace.params,
            macs_planned=macs_planned,
            example_inputs=inputs,
            output_signature=trace.signature,
            _cache=_ChannelCache(model, trace),
        )

    def apply(self, model: nn.Module, plan: Plan) -> PruningReport:
        start = time.perf_counter()
        if not isinstance(plan, Plan) or plan.kind != "channels":
            raise InvalidArgumentError(
                f"{type(self).__name__}.apply needs a channel Plan from ChannelPruner.plan, got "
                f"{type(plan).__name__}{'' if not isinstance(plan, Plan) else ' of kind ' + plan.kind}."
            )
        inputs = plan.example_inputs
        trace = plan._cache.take(model) if isinstance(plan._cache, _ChannelCache) else None
        if trace is None:  # plan made on another model, or the model changed since
            trace = _trace_model(model, inputs, [], self.importance, score=False)
        clone, graph = trace.clone, trace.graph
        _check_plan_matches(clone, graph, plan)
        history_start = len(graph.pruning_history())
        try:
            for g in plan.groups:
                _prune_group(clone, graph, g)
            _sync_attention(clone, rescale=True)
            _sync_lowrank(clone)
            with torch.no_grad(), _meta_swapped(clone) if trace.meta else contextlib.nullcontext():
                out, macs_after, params_after = _counted_forward(
                    clone, _to_meta(inputs) if trace.meta else inputs, shape_only=trace.meta
                )
            signature = _signature(out)
        except PruningError:
            raise
        except Exception as exc:
            raise _diagnose(model, inputs, plan, exc) from exc
        if plan.output_signature is not None and signature != plan.output_signature:
            raise PruningError(
                f"Pruning changed the model's output shape from {plan.output_signature} to "
                f"{signature}; the output layer was pruned. Pass it in ignored_layers. The model "
                "was left unchanged."
            )
        step = {
            "kind": "channels",
            "method": plan.method,
            "inputs": _input_spec(inputs),
            "groups": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in graph.pruning_history()[history_start:]],
        }
        _transplant(clone, model)
        return self._finish(model, plan, step, macs_after, params_after, start)

    # helpers --------------------------------------------------------------------------

    def _final_counts(self, groups: Sequence[_Group], counts: Sequence[int | None]) -> list[int]:
        out = []
        for g, k in zip(groups, counts):
            n = g.total
            if k is None:
                out.append(n)
                continue
            k = max(int(k), min(self.min_keep, n), 1)
            if self.round_to is not None:
                ch = g.channel_groups
                while k < n and (k * ch) % self.round_to:
                    k += 1
            out.append(min(k, n))
        return out

    def _group_plan(self, g: _Group, k: int, target: float | None) -> GroupPlan:
        keep = tuple(sorted(int(i) for i in g.order[:k].tolist()))
        eps, beta = _eps_beta(g.theta, k, self._q())
        return GroupPlan(
            name=g.root_name,
            layers=g.layers,
            total=g.total,
            keep=keep,
            eps=eps,
            beta=beta,
            target=target,
            note=self._note(g, k),
            root_out=g.root_out,
            channel_groups=g.channel_groups,
        )


# --------------------------------------------------------------------------- tracing


def _trace_model(
    model: nn.Module,
    inputs: Inputs,
    ignored: Sequence[str],
    importance: Callable[[Any], torch.Tensor | None],
    *,
    score: bool = True,
) -> _Trace:
    """Clone ``model`` structurally, build torch-pruning's DependencyGraph on the clone
    (meta tensors when possible), count the dense MACs in the same forward pass, swap the
    model's real parameters into the clone and score every prunable group."""
    trace = None
    for meta in (True, False) if _prefer_meta(model, inputs) else (False,):
        clone, real = _structural_clone(model, meta=meta)
        run_inputs = _to_meta(inputs) if meta else inputs
        try:
            graph, macs, params, signature = _build_graph(clone, run_inputs)
        except Exception as exc:
            if meta:
                logger.debug("tracing on the meta device failed; tracing for real", exc_info=True)
                continue
            raise _classify_trace_failure(model, inputs, exc) from exc
        _swap_real(clone, graph, real)
        trace = _Trace(clone, graph, [], macs, params, signature, meta)
        break
    assert trace is not None
    if score:
        trace.groups = _collect_groups(trace.clone, trace.graph, ignored, importance)
    return trace


def _build_graph(clone: nn.Module, inputs: Inputs) -> tuple[Any, int, int, Any]:
    box: dict[str, Any] = {}
    meta = _is_meta(inputs)

    def forward_fn(module: nn.Module, x: Inputs) -> Any:
        out, macs, params = _counted_forward(module, x, shape_only=meta, keep_graph=True)
        box.update(macs=macs, params=params, signature=_signature(out))
        return out

    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(clone, example_inputs=inputs, forward_fn=forward_fn, verbose=False)
    return graph, box["macs"], box["params"], box["signature"]


def _collect_groups(
    clone: nn.Module, graph: Any, ignored: Sequence[str], importance: Callable[[Any], torch.Tensor | None]
) -> list[_Group]:
    """Every prunable group, scored, as torch-pruning's BasePruner enumerates them
    (attention groups re-rooted at the output projection, channel groups averaged)."""
    names = graph._module2name
    attention = dict(_attention_modules(clone))
    num_heads = {_qkv_producer(m): int(m.num_heads) for m in attention.values()}
    ignored_modules = [sub for name in ignored for sub in clone.get_submodule(name).modules()]
    ignored_set = set(map(id, ignored_modules))
    out_groups, in_groups = _channel_groups(clone, graph, num_heads)
    is_out = graph.is_out_channel_pruning_fn
    squared = bool(getattr(importance, "squared", False))
    groups: list[_Group] = []
    for group in graph.get_all_groups(ignored_layers=ignored_modules, root_module_types=ROOT_TYPES):
        qkv = [dep.target.module for dep, _ in group if is_out(dep.handler) and dep.target.module in num_heads]
        if qkv:
            _check_attention_supported(clone, attention, qkv)
            group = _attention_root(graph, group)
            if group is None:
                continue
        ch = 1
        for dep, _ in group:
            table = out_groups if is_out(dep.handler) else in_groups
            ch = max(ch, table.get(dep.target.module, 1))
        with torch.no_grad():
            imp = importance(group)
        if imp is None:
            continue
        imp = torch.as_tensor(imp).detach().to("cpu", torch.float64).flatten()
        root = group[0].dep.target.module
        if imp.numel() % ch:
            logger.debug("skipping group %s: %d scores for %d channel groups", names.get(root), imp.numel(), ch)
            continue
        theta = imp.view(ch, -1).mean(0)
        if not torch.isfinite(theta).all() or (theta < 0).any():
            raise PruningError(
                f"The importance of group '{names.get(root)}' has negative or non-finite entries "
                "(NaN/inf weights?); check the weights or pass a non-negative importance."
            )
        if squared:
            theta = theta.sqrt()
        layers = tuple(
            dict.fromkeys(
                names[dep.target.module]
                for dep, _ in group
                if is_out(dep.handler) and isinstance(dep.target.module, ROOT_TYPES) and id(dep.target.module) not in ignored_set
            )
        )
        groups.append(
            _Group(
                root_name=names[root],
                root_out=bool(is_out(group[0].dep.handler)),
                layers=layers or (names[root],),
                channel_groups=ch,
                theta=theta,
                order=torch.sort(theta, descending=True, stable=True).indices,
            )
        )
    return groups


def _channel_groups(clone: nn.Module, graph: Any, num_heads: dict[nn.Module, int]) -> tuple[dict, dict]:
    """Channel grouping as torch-pruning's BasePruner detects it (grouped convs, heads)."""
    out_groups: dict[nn.Module, int] = dict(num_heads)
    in_groups: dict[nn.Module, int] = {}
    for m in clone.modules():
        pruner = graph.get_pruner_of_module(m)
        if pruner is None:
            continue
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels:
            continue
        g_in, g_out = pruner.get_in_channel_groups(m), pruner.get_out_channel_groups(m)
        if g_in > 1:
            in_groups[m] = g_in
        if g_out > 1:
            out_groups[m] = g_out
    return out_groups, in_groups


def _attention_root(graph: Any, group: Any) -> Any:
    """Re-root an attention group at the downstream projection's inputs (torch-pruning's
    own treatment of timm attention: index mapping through unbind is exact from there)."""
    downstream, idxs = None, None
    for dep, dep_idxs in group:
        if isinstance(dep.target.module, ROOT_TYPES) and graph.is_in_channel_pruning_fn(dep.handler):
            downstream, idxs = dep, dep_idxs
    if downstream is None:
        return None
    return graph.get_pruning_group(downstream.target.module, downstream.handler, list(idxs))


def _check_attention_supported(clone: nn.Module, attention: dict[str, nn.Module], qkv: list[nn.Module]) -> None:
    for name, m in attention.items():
        if _qkv_producer(m) in qkv:
            for attr in ("q_norm", "k_norm"):
                norm = getattr(m, attr, None)
                if norm is not None and not isinstance(norm, nn.Identity):
                    raise ModelNotSupportedError(
                        f"Cannot prune the head dimensions of '{name}': it normalizes queries and "
                        f"keys per head ({attr}), which torch-pruning does not resize. Workaround: "
                        f"ignored_layers=[model.get_submodule('{name}.qkv')]."
                    )


def _classify_trace_failure(model: nn.Module, inputs: Inputs, exc: Exception) -> RobustPruneError:
    """A failed trace is the user's inputs when a plain forward fails too, else the model."""
    try:
        clone, _ = _structural_clone(model, meta=False)
        clone.eval()
        with torch.no_grad():
            _forward(clone, inputs)
    except Exception as forward_exc:
        return InvalidArgumentError(
            f"The model does not accept example inputs of shape {_shape_str(inputs)} "
            f"({type(forward_exc).__name__}: {_first_line(forward_exc)}). Pass example_inputs with "
            "the shape the model expects, e.g. torch.rand(1, 3, 32, 32)."
        )
    return ModelNotSupportedError(
        f"torch-pruning could not trace {type(model).__name__} ({type(exc).__name__}: "
        f"{_first_line(exc)}). The model was left unchanged. Models with custom autograd "
        "functions or in-place tricks may need ignored_layers for the affected layers."
    )


# --------------------------------------------------------------------------- clones


def _structural_clone(model: nn.Module, *, meta: bool) -> tuple[nn.Module, dict[int, torch.Tensor]]:
    """A deep copy of ``model``'s modules whose parameters and buffers are proxies: meta
    tensors (``meta=True``: shapes only, free to trace) or aliases sharing the real storage.
    Returns the clone and ``{id(proxy): real tensor}`` for :func:`_swap_real`."""
    memo: dict[int, Any] = {}
    real: dict[int, torch.Tensor] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo:
            continue
        data = torch.empty_like(t, device="meta") if meta else t.detach()
        if isinstance(t, nn.Parameter):
            proxy: torch.Tensor = nn.Parameter(data, requires_grad=t.is_floating_point() or t.is_complex())
        else:
            proxy = data
        memo[id(t)] = proxy
        real[id(proxy)] = t
    clone = copy.deepcopy(model, memo)
    return clone, real


def _swap_real(clone: nn.Module, graph: Any, real: dict[int, torch.Tensor]) -> None:
    """Put the model's own parameter and buffer objects into the traced clone (and into the
    DependencyGraph's parameter-keyed tables), so scoring reads real weights and pruning
    creates new real tensors while the model's tensors stay untouched."""

    def swap(t: Any) -> Any:
        return real.get(id(t), t) if isinstance(t, torch.Tensor) else t

    for m in clone.modules():
        for table in (m._parameters, m._buffers):
            for k, t in list(table.items()):
                if t is not None and id(t) in real:
                    table[k] = real[id(t)]
    if graph is None:
        return
    for key in list(graph.module2node):
        if isinstance(key, torch.Tensor) and id(key) in real:
            node = graph.module2node.pop(key)
            node.module = real[id(key)]
            graph.module2node[node.module] = node
    graph._param_to_name = {swap(k): v for k, v in graph._param_to_name.items()}
    graph._module2name = {swap(k): v for k, v in graph._module2name.items()}
    graph.unwrapped_parameters = [type(u)(swap(u[0]), u[1]) for u in graph.unwrapped_parameters]
    graph.ignored_params = [swap(p) for p in graph.ignored_params]


def _to_meta(inputs: Inputs) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return torch.empty_like(inputs, device="meta")
    return tuple(torch.empty_like(t, device="meta") for t in inputs)


def _forward(model: nn.Module, inputs: Inputs) -> Any:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _counted_forward(
    model: nn.Module, inputs: Inputs, *, shape_only: bool = False, keep_graph: bool = False
) -> tuple[Any, int, int]:
    """Forward ``model`` (a throwaway clone) under torch-pruning's MACs counter hooks;
    returns ``(output, MACs per example, params)`` exactly as ``count_ops_and_params``.

    With ``shape_only`` (meta tensors), shape-preserving modules (norms, activations,
    dropout) skip their arithmetic: the counter's hooks only read shapes, and the meta
    decompositions of these ops are what makes a meta forward slow. With ``keep_graph``
    (tracing a DependencyGraph) they return ``x.clone()``: one autograd node per module fed
    by the module's input, the same wiring torch-pruning sees for the real op (whose
    parameter leaves it skips)."""
    counted = op_counter.add_flops_counting_methods(model)
    counted.eval()
    patched = [m for m in model.modules() if isinstance(m, _SHAPE_PRESERVING) and "forward" not in m.__dict__] if shape_only else []
    for m in patched:
        m.forward = _cloned if keep_graph else _same_shape
    counted.start_flops_count(ost=sys.stdout, verbose=False, ignore_list=[])
    try:
        out = _forward(counted, inputs)
        macs, params, _, _ = counted.compute_average_flops_cost()
    finally:
        counted.stop_flops_count()
        for m in patched:
            del m.forward
    return out, int(round(macs)), int(params)


_SHAPE_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.Dropout, nn.Dropout2d, nn.Identity,
)


def _same_shape(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def _cloned(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x.clone()


def _is_meta(inputs: Inputs) -> bool:
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    return any(t.is_meta for t in tensors)


@contextlib.contextmanager
def _meta_swapped(model: nn.Module) -> Iterator[None]:
    """Temporarily replace every parameter and buffer of a throwaway clone by a meta tensor
    of the same shape (to count it without a deep copy)."""
    saved = []
    for m in model.modules():
        for table in (m._parameters, m._buffers):
            for k, t in table.items():
                if t is not None and not t.is_meta:
                    saved.append((table, k, t))
    for table, k, t in saved:
        data = torch.empty_like(t, device="meta")
        table[k] = nn.Parameter(data, requires_grad=False) if isinstance(t, nn.Parameter) else data
    try:
        yield
    finally:
        for table, k, t in saved:
            table[k] = t


def _clone_count(model: nn.Module, inputs: Inputs, *, meta: bool) -> tuple[int, int, Any]:
    """``(MACs, params, output signature)`` of ``model``, counted on a structural clone
    (meta tensors, or aliases of the real ones: identical counts)."""
    clone, _ = _structural_clone(model, meta=meta)
    with torch.no_grad():
        out, macs, params = _counted_forward(clone, _to_meta(inputs) if meta else inputs, shape_only=meta)
    return macs, params, _signature(out)


#: above this many "parameter x input element" products a real forward costs more than a
#: shape-only one on the meta device, whose per-op Python overhead (~ms) dominates small models
_META_WORTH_IT = 3e10


def _prefer_meta(model: nn.Module, inputs: Inputs) -> bool:
    """Whether to trace and count on meta tensors (big models, big inputs) rather than run
    real arithmetic on aliased weights (small ones); both give identical results."""
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    per_example = sum(t[0].numel() if t.ndim else 1 for t in tensors)
    params = sum(p.numel() for p in model.parameters())
    return params * per_example > _META_WORTH_IT


def _meta_channel_macs(
    model: nn.Module, inputs: Inputs, groups: Sequence[_Group], counts: Sequence[int], trace: _Trace
) -> int:
    """MACs of the model after keeping ``counts`` units per group, counted exactly by
    pruning a meta clone (no arithmetic) with the same torch-pruning calls as ``apply``."""
    if all(k == g.total for g, k in zip(groups, counts)):
        return trace.macs
    clone, _ = _structural_clone(model, meta=trace.meta)
    run_inputs = _to_meta(inputs) if trace.meta else inputs
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(clone, example_inputs=run_inputs, verbose=False)
    for g, k in zip(groups, counts):
        plan = GroupPlan(g.root_name, g.layers, g.total, tuple(sorted(g.order[:k].tolist())), 0.0, 0.0,
                         root_out=g.root_out, channel_groups=g.channel_groups)
        _prune_group(clone, graph, plan)
    _sync_attention(clone, rescale=False)
    with torch.no_grad():
        _, macs, _ = _counted_forward(clone, run_inputs, shape_only=trace.meta)
    return macs


# --------------------------------------------------------------------------- surgery


def _prune_group(clone: nn.Module, graph: Any, g: GroupPlan) -> None:
    idxs = g.prune_indices()
    if not idxs:
        return
    module = clone.get_submodule(g.name)
    pruner = graph.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if g.root_out else pruner.prune_in_channels
    group = graph.get_pruning_group(module, fn, idxs)
    if not graph.check_pruning_group(group):
        raise PruningError(
            f"Pruning group '{g.name}' would remove every channel of a coupled layer; keep more "
            f"channels (min_keep) or ignore it: ignored_layers=[model.get_submodule('{g.layers[0]}')]. "
            "The model was left unchanged."
        )
    group.prune()


def _check_plan_matches(clone: nn.Module, graph: Any, plan: Plan) -> None:
    for g in plan.groups:
        try:
            module = clone.get_submodule(g.name)
        except AttributeError as exc:
            raise PruningError(
                f"The plan prunes '{g.name}', which this model does not have; make the plan on "
                "this model (pruner.plan(model, ...))."
            ) from exc
        pruner = graph.get_pruner_of_module(module)
        width = pruner.get_out_channels(module) if g.root_out else pruner.get_in_channels(module)
        if width != g.total * g.channel_groups:
            raise PruningError(
                f"The plan expects {g.total * g.channel_groups} channels at '{g.name}' but the model "
                f"has {width} (was it pruned or changed since the plan was made?). Call plan() "
                "again on the current model."
            )


def _transplant(clone: nn.Module, model: nn.Module) -> None:
    """Move the pruned clone's new tensors and widths into ``model`` (same module names).
    ``requires_grad`` of every replaced parameter is restored; modes and hooks are kept."""
    originals = dict(model.named_modules())
    updates: list[tuple[nn.Module, str, str, Any]] = []
    for name, cm in clone.named_modules():
        om = originals.get(name)
        if om is None:
            raise PruningError(f"Internal error: pruned clone has module '{name}' the model lacks.")
        for table in ("_parameters", "_buffers"):
            for k, t in getattr(cm, table).items():
                old = getattr(om, table).get(k)
                if t is not old:
                    if table == "_parameters" and isinstance(old, nn.Parameter) and t is not None:
                        t.requires_grad_(old.requires_grad)
                    updates.append((om, table, k, t))
        for k, v in cm.__dict__.items():
            if k.startswith("_") or k == "training" or not _is_simple(v):
                continue
            if k not in om.__dict__ or om.__dict__[k] != v:
                updates.append((om, "__dict__", k, v))
    snapshot = [(om, table, k, getattr(om, table).get(k, _MISSING) if table != "__dict__" else om.__dict__.get(k, _MISSING))
                for om, table, k, _ in updates]
    try:
        for om, table, k, v in updates:
            getattr(om, table)[k] = v
    except BaseException:
        for om, table, k, old in reversed(snapshot):
            if old is _MISSING:
                getattr(om, table).pop(k, None)
            else:
                getattr(om, table)[k] = old
        raise


_MISSING = object()


def _is_simple(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str, type(None))):
        return True
    return isinstance(v, tuple) and all(_is_simple(x) for x in v)


def _attention_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Multi-head attention modules in timm's layout: a fused ``qkv`` Linear (or a
    factorized :class:`LowRankLinear`) producing ``[q | k | v]`` of ``num_heads * head_dim``
    each."""
    for name, m in model.named_modules():
        if (
            _qkv_producer(m) is not None
            and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int)
        ):
            yield name, m


def _qkv_producer(attention: nn.Module) -> nn.Linear | None:
    """The Linear whose output rows are ``[q | k | v]`` (``qkv`` itself, or the second
    factor of a spectrally factorized ``qkv``)."""
    qkv = getattr(attention, "qkv", None)
    if isinstance(qkv, nn.Linear):
        return qkv
    if isinstance(qkv, LowRankLinear):
        return qkv.b
    return None


def _sync_attention(model: nn.Module, *, rescale: bool) -> None:
    """After head dimensions were pruned, set ``head_dim`` (and ``attn_dim``) from the new
    ``qkv`` width and make the fused (``scaled_dot_product_attention``, which scales by
    ``head_dim**-0.5`` of the *current* width) and non-fused (``self.scale``) paths agree:
    ``scale = new_head_dim**-0.5`` and, with ``rescale``, the query rows of ``qkv`` are
    multiplied by ``old_scale * sqrt(new_head_dim)``, so both paths compute exactly the
    pruned attention logits at the original temperature. Replays (``rescale=False``) only
    set the attributes: the saved weights are already rescaled."""
    for name, m in _attention_modules(model):
        heads = int(m.num_heads)
        producer = _qkv_producer(m)
        width = producer.out_features
        if width % (3 * heads):
            raise PruningError(
                f"'{name}.qkv' has {width} outputs, not a multiple of 3 x {heads} heads; the head "
                f"dimensions were pruned unevenly. Ignore it: ignored_layers=[model.get_submodule('{name}.qkv')]."
            )
        new_hd, old_hd = width // (3 * heads), int(m.head_dim)
        if new_hd == old_hd:
            continue
        if rescale:
            old_scale = float(getattr(m, "scale", old_hd**-0.5))
            factor = old_scale * math.sqrt(new_hd)
            rows = heads * new_hd
            with torch.no_grad():
                for pname in ("weight", "bias"):
                    p = getattr(producer, pname, None)
                    if p is None:
                        continue
                    new = p.detach().clone()
                    new[:rows] *= factor
                    setattr(producer, pname, nn.Parameter(new, requires_grad=p.requires_grad))
        m.head_dim = new_hd
        if isinstance(getattr(m, "attn_dim", None), int):
            m.attn_dim = heads * new_hd
        if isinstance(getattr(m, "scale", None), float):
            m.scale = new_hd**-0.5


def _sync_lowrank(model: nn.Module) -> None:
    """Keep :class:`LowRankLinear`'s recorded sizes equal to its (pruned) factors."""
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            m.in_features, m.out_features, m.rank = m.a.in_features, m.b.out_features, m.a.out_features


def _diagnose(model: nn.Module, inputs: Inputs, plan: Plan, exc: Exception) -> PruningError:
    """Find the first group whose pruning alone breaks the forward pass (on meta clones)."""
    culprit = None
    meta = _prefer_meta(model, inputs)
    for g in plan.groups:
        if not g.pruned_units:
            continue
        try:
            clone, _ = _structural_clone(model, meta=meta)
            run = _to_meta(inputs) if meta else inputs
            with torch.enable_grad():
                graph = tp.DependencyGraph().build_dependency(clone, example_inputs=run, verbose=False)
            _prune_group(clone, graph, g)
            _sync_attention(clone, rescale=False)
            with torch.no_grad():
                _forward(clone.eval(), run)
        except Exception:
            culprit = g
            break
    where = (
        f"pruning group '{culprit.name}' (layers {', '.join(culprit.layers)}) breaks the forward pass"
        if culprit is not None
        else "the pruned model fails its forward pass"
    )
    fix = (
        f"ignored_layers=[model.get_submodule('{culprit.layers[0]}')]"
        if culprit is not None
        else "ignored_layers=[...] for the layers around the failing operation"
    )
    return PruningError(
        f"torch-pruning cannot handle this model: {where} ({type(exc).__name__}: "
        f"{_first_line(exc)}). The model was left unchanged. Workaround: {fix}."
    )


def _replay_channel_step(model: nn.Module, step: Mapping[str, Any]) -> None:
    try:
        inputs = tuple(torch.zeros(tuple(s["shape"]), dtype=getattr(torch, s["dtype"])) for s in step["inputs"])
        entries = [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in step["groups"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgumentError(f"Malformed channel pruning step in the history: {exc}.") from exc
    run = inputs[0] if len(inputs) == 1 else inputs
    trace = _trace_model(model, run, [], GroupL2Importance(), score=False)
    clone, graph = trace.clone, trace.graph
    try:
        graph.load_pruning_history(entries)
    except Exception as exc:
        raise InvalidArgumentError(
            f"Cannot replay the pruning history on {type(model).__name__} ({type(exc).__name__}: "
            f"{_first_line(exc)}); the architecture does not match the one that was pruned."
        ) from exc
    _sync_attention(clone, rescale=False)
    _sync_lowrank(clone)
    _transplant(clone, model)


# --------------------------------------------------------------------------- small helpers


def _eps_beta(theta: torch.Tensor, k: int, q: float) -> tuple[float, float]:
    """Achieved ``eps_q(theta, k)`` and ``beta_q(theta, k)``; 0 for an all-zero group."""
    if float(theta.max()) <= 0:
        return 0.0, 0.0
    return relative_residual(theta, k, q), dispersion(theta, k, q)


def _infer_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    spec = model_spec(model)
    if spec is not None and spec.input_shape:
        return tuple(int(s) for s in spec.input_shape)
    inner = getattr(model, "net", model)  # NormalizedModel around a passthrough
    for candidate in (model, inner):
        cfg = getattr(candidate, "pretrained_cfg", None)
        if isinstance(cfg, Mapping) and cfg.get("input_size"):
            patch = getattr(candidate, "patch_embed", None)
            img = getattr(patch, "img_size", None)
            proj = getattr(patch, "proj", None)
            if isinstance(img, (tuple, list)) and isinstance(proj, nn.Conv2d):
                return (proj.in_channels, *(int(s) for s in img))
            return tuple(int(s) for s in cfg["input_size"])
        if type(candidate).__module__.startswith("torchvision.models"):
            return (3, 224, 224)
    layers = prunable_layers(model)
    if layers and isinstance(layers[0][1], (nn.Linear, LowRankLinear)):
        return (int(layers[0][1].in_features),)
    return None


def _check_inputs(example_inputs: Any) -> Inputs:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise InvalidArgumentError(
        f"example_inputs must be a tensor (or a tuple of tensors), got {type(example_inputs).__name__}; "
        "e.g. example_inputs=torch.rand(1, 3, 32, 32)."
    )


def _check_ignored(ignored: Any) -> tuple[nn.Module | str, ...]:
    if ignored is None:
        return ()
    if isinstance(ignored, (nn.Module, str, type)):
        ignored = [ignored]
    if not isinstance(ignored, Iterable):
        raise InvalidArgumentError(
            f"ignored_layers must be a list of modules (or module names), got {type(ignored).__name__}."
        )
    items = list(ignored)
    for item in items:
        if isinstance(item, type):
            raise InvalidArgumentError(
                f"ignored_layers got the type {item.__name__}, not a module: torch-pruning would "
                "silently ignore it. Pass module instances, e.g. ignored_layers=[model.fc], or "
                f"[m for m in model.modules() if isinstance(m, {item.__name__})]."
            )
        if not isinstance(item, (nn.Module, str)):
            raise InvalidArgumentError(
                f"ignored_layers entries must be modules of the model or their names, got "
                f"{type(item).__name__}."
            )
    return tuple(items)


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
        raise InvalidArgumentError(
            f"{name} is the fraction of the original MACs to keep and must be in (0, 1], got {value!r}."
        )
    return float(value)


def _check_eps_value(value: Any, where: str = "eps") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
        raise InvalidArgumentError(
            f"{where} must be in (0, 1) (the relative residual to allow), got {value!r}."
        )
    return float(value)


def _eps_setting(eps: Any) -> float | dict[str, float] | None:
    """Validated ``eps``: None, a float in (0, 1), or ``{module-name-glob: ε}``."""
    if eps is None:
        return None
    if isinstance(eps, Mapping):
        if not eps:
            raise InvalidArgumentError("eps={} is empty; give a float or {'name-glob': eps}.")
        out: dict[str, float] = {}
        for pattern, value in eps.items():
            if not isinstance(pattern, str):
                raise InvalidArgumentError(f"eps dict keys must be module-name globs (str), got {pattern!r}.")
            out[pattern] = _check_eps_value(value, f"eps['{pattern}']")
        return out
    return _check_eps_value(eps)


def _match_eps(eps: float | Mapping[str, float], layers: Sequence[str]) -> float | None:
    """ε for a group: the float, or the smallest ε among the globs matching any of its
    layers (None when no glob matches)."""
    if not isinstance(eps, Mapping):
        return float(eps)
    hits = [v for pat, v in eps.items() if any(fnmatch.fnmatchcase(n, pat) for n in layers)]
    return min(hits) if hits else None


def _check_globs_match(eps: Any, names: Sequence[Sequence[str]]) -> None:
    if not isinstance(eps, Mapping):
        return
    flat = [n for layers in names for n in layers]
    for pattern in eps:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in flat):
            shown = ", ".join(flat[:8]) + (", ..." if len(flat) > 8 else "")
            raise InvalidArgumentError(
                f"eps pattern '{pattern}' matches no prunable layer. Prunable layers: {shown}."
            )


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((n, id(p), tuple(p.shape)) for n, p in model.named_parameters())


def _signature(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_signature(o) for o in out)
    if isinstance(out, Mapping):
        return tuple((k, _signature(v)) for k, v in sorted(out.items(), key=lambda kv: str(kv[0])))
    return type(out).__name__


def _input_spec(inputs: Inputs) -> list[dict[str, Any]]:
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    return [{"shape": [int(s) for s in t.shape], "dtype": str(t.dtype).removeprefix("torch.")} for t in tensors]


def _shape_list(inputs: Inputs) -> list[int] | list[list[int]]:
    if isinstance(inputs, torch.Tensor):
        return [int(s) for s in inputs.shape]
    return [[int(s) for s in t.shape] for t in inputs]


def _shape_str(inputs: Inputs) -> str:
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    return ", ".join(str(tuple(t.shape)) for t in inputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _with_seconds(report: PruningReport, seconds: float) -> PruningReport:
    from dataclasses import replace

    return replace(report, seconds=seconds)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 4:
        return f"[{len(v)} items]"
    return str(v)


def _plain(v: Any) -> Any:
    """JSON-ready copy: tuples -> lists, numbers -> Python numbers, other objects -> str."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return repr(v)
