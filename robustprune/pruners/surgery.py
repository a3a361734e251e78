"""Channel surgery on a traced clone, and moving the result into the model in one step.

``apply`` prunes the clone group by group (:func:`prune_group`), then
:func:`transplant` moves the clone's new tensors and widths into the model, all or nothing.
When torch-pruning breaks the forward pass, :func:`diagnose` names the group responsible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustprune._inputs import Inputs, forward, to_meta
from robustprune.errors import PruningError
from robustprune.layers import LowRankLinear
from robustprune.pruners import _tp
from robustprune.pruners._checks import first_line
from robustprune.pruners.attention import sync_attention
from robustprune.pruners.counting import prefer_meta, structural_clone
from robustprune.pruners.plan import GroupPlan, Plan

__all__ = ["prune_group", "check_plan_matches", "transplant", "sync_lowrank", "diagnose"]

_MISSING = object()


def prune_group(clone: nn.Module, graph: Any, g: GroupPlan) -> None:
    """Remove the units ``g`` does not keep, with every coupled layer."""
    idxs = g.prune_indices()
    if not idxs:
        return
    if not _tp.prune_channels(graph, clone.get_submodule(g.name), g.root_out, idxs):
        raise PruningError(
            f"Pruning group '{g.name}' would remove every channel of a coupled layer; keep more "
            f"channels (min_keep) or ignore it: ignored_layers=[model.get_submodule('{g.layers[0]}')]. "
            "The model was left unchanged."
        )


def check_plan_matches(clone: nn.Module, graph: Any, plan: Plan) -> None:
    """Every group of ``plan`` exists in the traced clone with the width the plan expects."""
    for g in plan.groups:
        try:
            module = clone.get_submodule(g.name)
        except AttributeError as exc:
            raise PruningError(
                f"The plan prunes '{g.name}', which this model does not have; make the plan on "
                "this model (pruner.plan(model, ...))."
            ) from exc
        width = _tp.channel_width(graph, module, g.root_out)
        if width != g.total * g.channel_groups:
            raise PruningError(
                f"The plan expects {g.total * g.channel_groups} channels at '{g.name}' but the model "
                f"has {width} (was it pruned or changed since the plan was made?). Call plan() "
                "again on the current model."
            )


def transplant(clone: nn.Module, model: nn.Module) -> None:
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


def sync_lowrank(model: nn.Module) -> None:
    """Keep :class:`LowRankLinear`'s recorded sizes equal to its (pruned) factors."""
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            m.in_features, m.out_features, m.rank = m.a.in_features, m.b.out_features, m.a.out_features


def diagnose(model: nn.Module, inputs: Inputs, plan: Plan, exc: Exception) -> PruningError:
    """Find the first group whose pruning alone breaks the forward pass (on fresh clones)."""
    culprit = None
    meta = prefer_meta(model, inputs)
    for g in plan.groups:
        if not g.pruned_units:
            continue
        try:
            clone, _ = structural_clone(model, meta=meta)
            run = to_meta(inputs) if meta else inputs
            graph = _tp.build_graph(clone, run)
            prune_group(clone, graph, g)
            sync_attention(clone, rescale=False)
            with torch.no_grad():
                forward(clone.eval(), run)
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
        f"{first_line(exc)}). The model was left unchanged. Workaround: {fix}."
    )


def _is_simple(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str, type(None))):
        return True
    return isinstance(v, tuple) and all(_is_simple(x) for x in v)
