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
from robustprune.layers import get_submodule_parent
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
    factorized layers."""
    for i, step in enumerate(history):
        kind = step.get("kind") if isinstance(step, Mapping) else None
        if kind == "channels":
            replay_channel_step(model, step)
        elif kind == "spectral":
            replay_spectral_step(model, step)
        else:
            raise InvalidArgumentError(
                f"Pruning history step {i} has unknown kind {kind!r}; expected 'channels' or "
                "'spectral'. Was the history written by a newer robustprune?"
            )
    model.robustprune_history = [dict(s) for s in history]
    return model


def replay_channel_step(model: nn.Module, step: Mapping[str, Any]) -> None:
    """Redo a recorded channel step: trace the model on zero inputs of the recorded shapes
    and replay torch-pruning's history entries on the clone, then transplant."""
    try:
        inputs = tuple(torch.zeros(tuple(s["shape"]), dtype=getattr(torch, s["dtype"])) for s in step["inputs"])
        entries = [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in step["groups"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgumentError(f"Malformed channel pruning step in the history: {exc}.") from exc
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
    try:
        layers = [(str(e["name"]), int(e["rank"])) for e in step["layers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"Malformed spectral pruning step in the history: {exc}.") from exc
    for name, rank in layers:
        try:
            layer = model.get_submodule(name)
        except AttributeError as exc:
            raise InvalidArgumentError(
                f"Cannot replay spectral pruning: the model has no layer '{name}'; the architecture "
                "does not match the one that was pruned."
            ) from exc
        parent, attr = get_submodule_parent(model, name)
        setattr(parent, attr, factorized_layer(layer, rank))
