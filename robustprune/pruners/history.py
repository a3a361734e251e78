"""The pruning history: what every applied step records, and replaying it.

Each applied plan appends one step, plain data, to ``model.robustprune_history``:

- channels: ``{"kind": "channels", "method": ..., "inputs": [{"shape": [...], "dtype":
  "float32"}, ...], "groups": [[module name, is_out, [indices]], ...]}``; ``groups`` is
  torch-pruning's own pruning history;
- spectral: ``{"kind": "spectral", "method": ..., "layers": [{"name": ..., "rank": r}, ...]}``.

:func:`robustprune.checkpoint.save_pruned` stores it (checkpoint ``FORMAT_VERSION`` 1) and
:func:`replay_history` rebuilds the pruned structure on a freshly built architecture, whose
weights are then loaded from the state dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustprune._inputs import Inputs
from robustprune.errors import InvalidArgumentError
from robustprune.layers import get_submodule_parent, matricize
from robustprune.pruners import _tp
from robustprune.pruners._checks import first_line
from robustprune.pruners.attention import sync_attention
from robustprune.pruners.factorize import factorized_layer
from robustprune.pruners.surgery import sync_lowrank, transplant
from robustprune.pruners.tracing import trace_model

__all__ = [
    "record_step",
    "channel_step",
    "spectral_step",
    "replay_history",
    "check_history",
    "replay_channel_step",
    "replay_spectral_step",
]


def record_step(model: nn.Module, step: dict[str, Any]) -> None:
    """Append ``step`` to ``model.robustprune_history`` (a new list)."""
    model.robustprune_history = [*list(getattr(model, "robustprune_history", []) or []), step]


def channel_step(method: str, inputs: Inputs, entries: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """The record of a channel step: the example inputs' shapes and dtypes and
    torch-pruning's ``[name, is_out, indices]`` history entries."""
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    return {
        "kind": "channels",
        "method": method,
        "inputs": [{"shape": [int(s) for s in t.shape], "dtype": str(t.dtype).removeprefix("torch.")} for t in tensors],
        "groups": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in entries],
    }


def spectral_step(method: str, ranks: Mapping[str, int]) -> dict[str, Any]:
    """The record of a spectral step: the rank of every factorized layer."""
    return {"kind": "spectral", "method": method, "layers": [{"name": n, "rank": int(r)} for n, r in ranks.items()]}


def replay_history(model: nn.Module, history: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Re-apply recorded pruning steps (``model.robustprune_history``) to a freshly built
    model of the same architecture, in order; the weights are then loaded from a state
    dict. Channel steps replay torch-pruning's pruning history; spectral steps rebuild the
    factorized layers. The history is checked (:func:`check_history`) before any step runs."""
    history = check_history(history)
    for step in history:
        if step["kind"] == "channels":
            replay_channel_step(model, step)
        else:
            replay_spectral_step(model, step)
    model.robustprune_history = [dict(s) for s in history]
    return model


def check_history(history: Any) -> list[dict[str, Any]]:
    """``history`` as a list of well-formed steps (see the module docstring); an
    :class:`InvalidArgumentError` naming the bad field (``history[i].groups[j]``...) otherwise."""
    if not isinstance(history, (list, tuple)):
        raise InvalidArgumentError(f"history must be a list of pruning steps, got {type(history).__name__}.",
                                   argument="history")
    for i, step in enumerate(history):
        where = f"history[{i}]"
        kind = step.get("kind") if isinstance(step, Mapping) else None
        if kind == "channels":
            _check_list(step.get("inputs"), f"{where}.inputs", _check_input, nonempty=True)
            _check_list(step.get("groups"), f"{where}.groups", _check_entry)
        elif kind == "spectral":
            _check_list(step.get("layers"), f"{where}.layers", _check_rank)
        else:
            raise InvalidArgumentError(
                f"Pruning {where} has unknown kind {kind!r}; expected 'channels' or 'spectral'. "
                "Was the history written by a newer robustprune?", argument="history",
            )
    return [dict(s) for s in history]


def replay_channel_step(model: nn.Module, step: Mapping[str, Any]) -> None:
    """Redo a recorded channel step: trace the model on zero inputs of the recorded shapes
    and replay torch-pruning's history entries on the clone, then transplant."""
    check_history([step])
    inputs = tuple(torch.zeros(tuple(s["shape"]), dtype=getattr(torch, s["dtype"])) for s in step["inputs"])
    entries = [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in step["groups"]]
    trace = trace_model(model, inputs[0] if len(inputs) == 1 else inputs)
    try:
        _tp.load_pruning_history(trace.graph, entries)
    except Exception as exc:
        raise InvalidArgumentError(
            f"Cannot replay the pruning history on {type(model).__name__} ({type(exc).__name__}: "
            f"{first_line(exc)}); the architecture does not match the one that was pruned."
        ) from exc
    sync_attention(trace.clone, rescale=False)
    sync_lowrank(trace.clone)
    transplant(trace.clone, model)


def replay_spectral_step(model: nn.Module, step: Mapping[str, Any]) -> None:
    """Rebuild the factorized layers of a recorded spectral step (weights zeroed, to be
    loaded from a state dict)."""
    check_history([step])
    layers = [(str(e["name"]), int(e["rank"])) for e in step["layers"]]
    for name, rank in layers:
        try:
            layer = model.get_submodule(name)
        except AttributeError as exc:
            raise InvalidArgumentError(
                f"Cannot replay spectral pruning: the model has no layer '{name}'; the architecture "
                "does not match the one that was pruned.", argument="history",
            ) from exc
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or rank > min(matricize(layer).shape):
            raise InvalidArgumentError(
                f"Cannot replay spectral pruning of '{name}' to rank {rank}: the model's '{name}' is a "
                f"{type(layer).__name__}{'' if not isinstance(layer, (nn.Linear, nn.Conv2d)) else ' of lower rank'}; "
                "the architecture does not match the one that was pruned.", argument="history",
            )
        parent, attr = get_submodule_parent(model, name)
        setattr(parent, attr, factorized_layer(layer, rank))


# --------------------------------------------------------------------------- checks


def _check_list(value: Any, where: str, check_item: Any, *, nonempty: bool = False) -> None:
    if not isinstance(value, (list, tuple)) or (nonempty and not value):
        raise InvalidArgumentError(f"Malformed pruning {where}: expected a{' non-empty' if nonempty else ''} list, "
                                   f"got {type(value).__name__}.", argument="history")
    for j, item in enumerate(value):
        problem = check_item(item)
        if problem:
            raise InvalidArgumentError(f"Malformed pruning {where}[{j}]: {problem}.", argument="history")


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_input(item: Any) -> str:
    if not isinstance(item, Mapping):
        return f"expected {{'shape': [...], 'dtype': ...}}, got {type(item).__name__}"
    shape, dtype = item.get("shape"), item.get("dtype")
    if not isinstance(shape, (list, tuple)) or not shape or not all(_is_index(s) and s > 0 for s in shape):
        return f"shape must be a list of positive integers, got {shape!r}"
    if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
        return f"dtype must name a torch dtype (e.g. 'float32'), got {dtype!r}"
    return ""


def _check_entry(item: Any) -> str:
    ok = (
        isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)
        and isinstance(item[1], bool) and isinstance(item[2], (list, tuple)) and all(map(_is_index, item[2]))
    )
    return "" if ok else f"expected [module name, is_out, [channel indices]], got {item!r:.80}"


def _check_rank(item: Any) -> str:
    ok = (
        isinstance(item, Mapping) and isinstance(item.get("name"), str) and _is_index(item.get("rank"))
        and item["rank"] >= 1
    )
    return "" if ok else f"expected {{'name': layer name, 'rank': positive integer}}, got {item!r:.80}"
