"""Structured channel pruning through torch-pruning's DependencyGraph, driven by a rule.

``ChannelPruner(rule)`` traces the model (:mod:`~robustprune.pruners.tracing`), scores its
dependency groups (:mod:`~robustprune.pruners.groups`, with the importance of
:mod:`~robustprune.pruners.importance`), asks the rule (:mod:`~robustprune.pruners.rules`)
how many units each group keeps and keeps the most important ones. Our code decides *which*
channels go; torch-pruning removes them.

A model is never left half-pruned. ``plan`` never touches the model: it traces a structural
clone whose parameters are meta tensors (or aliases), then swaps the model's own parameter
objects into the clone to score channels. ``apply`` prunes that clone (torch-pruning
creates new parameters and never writes into the old ones), checks the result with a
forward pass, and only then transplants the new parameters and widths into the model in one
step. The model's train/eval mode and ``requires_grad`` flags are untouched. Pruning
replaces Parameter objects: rebuild the optimizer (and any EMA) afterwards.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustprune._inputs import Inputs, shape_list, to_meta
from robustprune.errors import InvalidArgumentError, PruningError
from robustprune.metrics import dispersion, relative_residual
from robustprune.pruners import _tp
from robustprune.pruners._checks import is_int
from robustprune.pruners.attention import sync_attention
from robustprune.pruners.base import Pruner
from robustprune.pruners.counting import (
    counted_forward,
    meta_swapped,
    output_signature,
    structural_clone,
)
from robustprune.pruners.groups import Group, collect_groups
from robustprune.pruners.history import channel_step
from robustprune.pruners.importance import ImportanceLike, check_importance
from robustprune.pruners.plan import GroupPlan, Plan, PruningReport
from robustprune.pruners.rules import PlanContext, Rule
from robustprune.pruners.search import solve_target_macs
from robustprune.pruners.support import torch_pruning_failures, warn_nothing_prunable
from robustprune.pruners.surgery import (
    check_plan_matches,
    diagnose,
    prune_group,
    sync_lowrank,
    transplant,
)
from robustprune.pruners.tracing import Trace, trace_model

__all__ = ["ChannelPruner", "planned_macs"]


class ChannelPruner(Pruner):
    """Structured channel pruning with a :class:`~robustprune.pruners.rules.Rule`.

    Per plan, an importance with a ``prepare(model)`` method is prepared before the groups
    are scored, and the rule's ``prepare(context)`` runs once the groups are known (what
    either returns, e.g. its cost, is recorded in the settings of the plan and report).

    The rule decides how many units ``k`` each dependency group keeps; this class keeps the
    ``k`` most important units of every group (``theta`` descending, ties to the lower
    index), at least ``min_keep`` and never zero, rounded up so that the root layer's kept
    width is a multiple of ``round_to``. With ``target_macs`` the rule's strength is solved
    over its breakpoints (see :class:`~robustprune.pruners.base.Pruner`).

    Args:
        rule: the rule (e.g. ``EpsilonRule(eps=0.1)``).
        importance: an :class:`~robustprune.pruners.importance.Importance` (``theta = score
            ** (1 / power)``) or a plain callable ``group -> per-channel scores``, used as
            ``theta`` as is (ε is then the relative residual of those scores), e.g.
            ``tp.importance.GroupTaylorImportance()`` after a backward pass so gradients
            exist; or a name of :data:`~robustprune.pruners.importance.IMPORTANCES` that
            needs no data (``"l2"``; for ``"adv-taylor"`` pass an
            :class:`~robustprune.pruners.importance.AdvTaylorImportance`); default
            :class:`~robustprune.pruners.importance.GroupL2Importance`.
        round_to: keep a multiple of this many channels at each group's root layer. Default
            ``None``: no rounding on CPU; on CUDA (the device of the model's parameters) the
            dtype's tensor-core multiple, :func:`cuda_round_to` (8; 16 for 8-bit weights), and
            the report says ``round_to=8 (CUDA default)``. ``round_to=1`` turns it off.
        min_keep: keep at least this many units per group (default 1: no layer collapse).
        ignored_layers, target_macs, macs_tolerance, progress: see
            :class:`~robustprune.pruners.base.Pruner`.
    """

    kind = "channels"

    def __init__(
        self,
        rule: Rule,
        importance: ImportanceLike | str | None = None,
        *,
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
        self.importance = check_importance(importance)
        if round_to is not None and (not is_int(round_to) or round_to < 1):
            raise InvalidArgumentError(f"round_to must be a positive integer or None, got {round_to!r}.",
                                       argument="round_to")
        if not is_int(min_keep) or min_keep < 1:
            raise InvalidArgumentError(f"min_keep must be an integer >= 1, got {min_keep!r}.", argument="min_keep")
        self.round_to = None if round_to is None else int(round_to)
        self.min_keep = int(min_keep)
        if not isinstance(rule, Rule):
            raise InvalidArgumentError(
                "rule must be a robustprune.pruners.rules.Rule (keep_counts(groups, strength), "
                f"breakpoints(groups)), e.g. EpsilonRule(eps=0.1); got {type(rule).__name__}."
            )
        if target_macs is None and rule.strength is None:
            raise InvalidArgumentError(
                f"The {rule.name} rule has no strength of its own; give target_macs (the fraction "
                "of MACs to keep) or a strength to the rule."
            )
        self.rule = rule

    @property
    def method(self) -> str:
        return self.rule.name

    def settings(self) -> dict[str, Any]:
        return {
            **self.rule.settings(),
            "importance": repr(self.importance),
            "round_to": self.round_to,
            "min_keep": self.min_keep,
            "target_macs": self.target_macs,
        }

    # plan / apply ---------------------------------------------------------------------

    def plan(self, model: nn.Module, example_inputs: Inputs | None = None) -> Plan:
        inputs = self._resolve_inputs(model, example_inputs)
        ignored = self._ignored_names(model)
        trace = trace_model(model, inputs)
        measured = _prepared(self.importance, model)
        with torch_pruning_failures(model):
            groups = collect_groups(trace.clone, trace.graph, ignored, self.importance)
        if not groups:
            warn_nothing_prunable(model)
        rule = self.rule
        # set before counts_fraction can run (a rule's preparation may call it)
        round_to = self.round_to if self.round_to is not None else default_round_to(model)

        def counts_fraction(counts: Sequence[int | None]) -> float:
            return planned_macs(model, inputs, groups, self._final_counts(groups, counts, round_to), trace) / trace.macs

        context = PlanContext(
            model=model, inputs=inputs, groups=tuple(groups), min_keep=self.min_keep, progress=self.progress,
            target_macs=self.target_macs, macs_tolerance=self.macs_tolerance, kept_fraction=counts_fraction,
        )
        measured.update(_prepared(rule, context))
        setting = {**self.settings(), **measured}
        if self.round_to is None and round_to is not None:
            setting["round_to"], setting["round_to_default"] = round_to, "CUDA"
        macs_planned = None
        if self.target_macs is None:
            strength = rule.strength
            counts = self._final_counts(groups, rule.keep_counts(groups, strength), round_to)
        else:
            strength, macs_planned, counts = self._solve(model, groups, counts_fraction, trace.macs, round_to)
            if rule.solves is not None:
                setting[rule.solves] = float(strength)
        setting["ignored_layers"] = ignored
        setting["example_input_shape"] = shape_list(inputs)
        plan = Plan(
            method=self.method,
            kind=self.kind,
            setting=setting,
            groups=tuple(self._group_plan(g, k, strength) for g, k in zip(groups, counts)),
            macs_before=trace.macs,
            params_before=trace.params,
            macs_planned=macs_planned,
            example_inputs=inputs,
            output_signature=trace.signature,
        )
        _TRACES.put(plan, model, trace)
        return plan

    def apply(self, model: nn.Module, plan: Plan) -> PruningReport:
        start = time.perf_counter()
        if not isinstance(plan, Plan) or plan.kind != "channels":
            raise InvalidArgumentError(
                f"{type(self).__name__}.apply needs a channel Plan from ChannelPruner.plan, got "
                f"{type(plan).__name__}{'' if not isinstance(plan, Plan) else ' of kind ' + plan.kind}."
            )
        inputs = plan.example_inputs
        trace = _TRACES.take(plan, model)
        if trace is None:  # plan made on another model, or the model changed since
            trace = trace_model(model, inputs)
        clone, graph = trace.clone, trace.graph
        check_plan_matches(clone, graph, plan)
        history_start = len(_tp.pruning_history(graph))
        try:
            for g in plan.groups:
                prune_group(clone, graph, g)
            sync_attention(clone, rescale=True)
            sync_lowrank(clone)
            with torch.no_grad(), meta_swapped(clone) if trace.meta else contextlib.nullcontext():
                out, macs_after, params_after = counted_forward(
                    clone, to_meta(inputs) if trace.meta else inputs, shape_only=trace.meta
                )
            signature = output_signature(out)
        except PruningError:
            raise
        except Exception as exc:
            raise diagnose(model, inputs, plan, exc) from exc
        if plan.output_signature is not None and signature != plan.output_signature:
            raise PruningError(
                f"Pruning changed the model's output shape from {plan.output_signature} to "
                f"{signature}; the output layer was pruned. Pass it in ignored_layers. The model "
                "was left unchanged."
            )
        step = channel_step(plan.method, inputs, _tp.pruning_history(graph)[history_start:])
        transplant(clone, model)
        return self._finish(model, plan, step, macs_after=macs_after, params_after=params_after, start=start)

    # helpers --------------------------------------------------------------------------

    def _solve(
        self, model: nn.Module, groups: Sequence[Group], counts_fraction: Any, macs: int, round_to: int | None
    ) -> tuple[float, int, list[int]]:
        """``(strength, planned MACs, counts)`` keeping ``target_macs`` of the MACs;
        ``target_macs=1`` keeps every unit (strength 0: the model is left unpruned)."""
        rule = self.rule
        if self.target_macs >= 1 or not groups:
            return 0.0, macs, [g.total for g in groups]

        def kept_fraction(s: float) -> float:
            return counts_fraction(rule.keep_counts(groups, s))

        with torch_pruning_failures(model):
            strength, fraction = solve_target_macs(
                rule.breakpoints(groups), kept_fraction, target=self.target_macs,
                tolerance=self.macs_tolerance, pruner=type(self).__name__, method=self.method,
                progress=self.progress,
            )
        return strength, int(round(fraction * macs)), self._final_counts(groups, rule.keep_counts(groups, strength), round_to)

    def _final_counts(
        self, groups: Sequence[Group], counts: Sequence[int | None], round_to: int | None
    ) -> list[int]:
        """The rule's counts raised to ``min_keep`` (never 0) and rounded up to ``round_to``
        (None: the whole group)."""
        out = []
        for g, k in zip(groups, counts):
            n = g.total
            if k is None:
                out.append(n)
                continue
            k = max(int(k), min(self.min_keep, n), 1)
            if round_to is not None and round_to > 1:
                ch = g.channel_groups
                while k < n and (k * ch) % round_to:
                    k += 1
            out.append(min(k, n))
        return out

    def _group_plan(self, g: Group, k: int, strength: Any) -> GroupPlan:
        keep = tuple(sorted(int(i) for i in g.order[:k].tolist()))
        if float(g.theta.max()) <= 0:  # an all-zero group: nothing removed, nothing dispersed
            eps, beta = 0.0, 0.0
        else:
            eps, beta = relative_residual(g.theta, k, self.rule.q), dispersion(g.theta, k, self.rule.q)
        return GroupPlan(
            name=g.name,
            layers=g.layers,
            total=g.total,
            keep=keep,
            eps=eps,
            beta=beta,
            target=self.rule.target(g, strength),
            note=self.rule.note(g, strength),
            root_out=g.root_out,
            channel_groups=g.channel_groups,
        )


def on_cuda(model: nn.Module) -> bool:
    """Whether the model's parameters live on a CUDA device (the first parameter decides)."""
    param = next(model.parameters(), None)
    return param is not None and param.device.type == "cuda"


def cuda_round_to(dtype: torch.dtype) -> int:
    """The tensor-core multiple of channel counts for weights of ``dtype``: 16 for 8-bit
    types, else 8 (fp16/bf16, and fp32 through TF32)."""
    return 16 if dtype.itemsize == 1 else 8


def default_round_to(model: nn.Module) -> int | None:
    """The ``round_to`` a channel pruner uses when none is given: :func:`cuda_round_to` of the
    parameters' dtype for a model on CUDA (:func:`on_cuda`), else ``None`` (no rounding)."""
    if not on_cuda(model):
        return None
    return cuda_round_to(next(model.parameters()).dtype)


def planned_macs(
    model: nn.Module, inputs: Inputs, groups: Sequence[Group], counts: Sequence[int], trace: Trace
) -> int:
    """MACs of the model after keeping ``counts`` units per group, counted exactly by
    pruning a fresh clone (meta tensors when ``trace`` was meta: no arithmetic) with the
    same torch-pruning calls as ``apply``."""
    if all(k == g.total for g, k in zip(groups, counts)):
        return trace.macs
    clone, _ = structural_clone(model, meta=trace.meta)
    run_inputs = to_meta(inputs) if trace.meta else inputs
    graph = _tp.build_graph(clone, run_inputs)
    for g, k in zip(groups, counts):
        plan = GroupPlan(g.name, g.layers, g.total, tuple(sorted(g.order[:k].tolist())), 0.0, 0.0,
                         root_out=g.root_out, channel_groups=g.channel_groups)
        prune_group(clone, graph, plan)
    sync_attention(clone, rescale=False)
    with torch.no_grad():
        _, macs, _ = counted_forward(clone, run_inputs, shape_only=trace.meta)
    return macs


def _prepared(strategy: Any, arg: Any) -> dict[str, Any]:
    """Run ``strategy.prepare(arg)`` when the importance or rule has one; what it reports."""
    prepare = getattr(strategy, "prepare", None)
    if not callable(prepare):
        return {}
    return dict(prepare(arg) or {})


class _TraceCache:
    """The trace of each live plan, reusable once by ``apply`` on the same, unchanged model
    (same parameter objects and shapes). An entry lives as long as its plan."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, tuple, Trace]] = {}

    def put(self, plan: Plan, model: nn.Module, trace: Trace) -> None:
        key = id(plan)
        self._entries[key] = (weakref.ref(model), _fingerprint(model), trace)
        weakref.finalize(plan, self._entries.pop, key, None)

    def take(self, plan: Plan, model: nn.Module) -> Trace | None:
        entry = self._entries.pop(id(plan), None)
        if entry is None:
            return None
        ref, fingerprint, trace = entry
        if ref() is not model or _fingerprint(model) != fingerprint:
            return None
        return trace


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((n, id(p), tuple(p.shape)) for n, p in model.named_parameters())


_TRACES = _TraceCache()
