"""One trace of a model: a structural clone with torch-pruning's DependencyGraph on it.

Tracing never touches the model. It clones the model structurally (meta tensors when
:func:`~robustprune.pruners.counting.prefer_meta` says so, else aliases of the real
storage), builds the DependencyGraph on the clone while counting the dense MACs in the same
forward pass, then swaps the model's own parameter objects into the clone and the graph:
scoring reads the real weights, and pruning the clone creates new tensors while the
model's stay untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustprune._inputs import Inputs, forward, shape_str, to_meta
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError, RobustPruneError
from robustprune.pruners import _tp
from robustprune.pruners._checks import first_line
from robustprune.pruners.counting import (
    counted_forward,
    is_meta,
    output_signature,
    prefer_meta,
    structural_clone,
    swap_real_modules,
)

__all__ = ["Trace", "trace_model"]

logger = logging.getLogger(__name__)


@dataclass
class Trace:
    """What one trace of a model gives: the clone (holding the model's real tensors), its
    DependencyGraph, the dense MACs and params, the output signature, and whether the trace
    ran on meta tensors (then the pruned clone is counted shape-only as well)."""

    clone: nn.Module
    graph: Any
    macs: int
    params: int
    signature: Any
    meta: bool


def trace_model(model: nn.Module, inputs: Inputs, *, meta: bool | None = None) -> Trace:
    """Trace ``model`` on ``inputs`` (see the module docstring). ``meta``: try the meta
    device first (True; falls back to a real trace when the model cannot run on it), trace
    for real (False), or let :func:`prefer_meta` decide (None). A failed trace raises
    :class:`InvalidArgumentError` when the inputs are wrong, else
    :class:`ModelNotSupportedError`."""
    if meta is None:
        meta = prefer_meta(model, inputs)
    for attempt in (True, False) if meta else (False,):
        clone, real = structural_clone(model, meta=attempt)
        run_inputs = to_meta(inputs) if attempt else inputs
        try:
            graph, macs, params, signature = _build_counted(clone, run_inputs)
        except Exception as exc:
            if attempt:
                logger.debug("tracing on the meta device failed; tracing for real", exc_info=True)
                continue
            raise _classify_trace_failure(model, inputs, exc) from exc
        swap_real_modules(clone, real)
        _tp.swap_real_tensors(graph, real)
        return Trace(clone, graph, macs, params, signature, attempt)
    raise AssertionError("unreachable: the real trace either returns or raises")


def _build_counted(clone: nn.Module, inputs: Inputs) -> tuple[Any, int, int, Any]:
    """The DependencyGraph of ``clone``, with the MACs, params and output signature of the
    tracing forward pass."""
    box: dict[str, Any] = {}
    shape_only = is_meta(inputs)

    def forward_fn(module: nn.Module, x: Inputs) -> Any:
        out, macs, params = counted_forward(module, x, shape_only=shape_only, keep_graph=True)
        box.update(macs=macs, params=params, signature=output_signature(out))
        return out

    graph = _tp.build_graph(clone, inputs, forward_fn)
    return graph, box["macs"], box["params"], box["signature"]


def _classify_trace_failure(model: nn.Module, inputs: Inputs, exc: Exception) -> RobustPruneError:
    """A failed trace is the user's inputs when a plain forward fails too, else the model."""
    try:
        clone, _ = structural_clone(model, meta=False)
        clone.eval()
        with torch.no_grad():
            forward(clone, inputs)
    except Exception as forward_exc:
        return InvalidArgumentError(
            f"The model does not accept example inputs of shape {shape_str(inputs)} "
            f"({type(forward_exc).__name__}: {first_line(forward_exc)}). Pass example_inputs with "
            "the shape the model expects, e.g. torch.rand(1, 3, 32, 32)."
        )
    return ModelNotSupportedError(
        f"torch-pruning could not trace {type(model).__name__} ({type(exc).__name__}: "
        f"{first_line(exc)}). The model was left unchanged. Models with custom autograd "
        "functions or in-place tricks may need ignored_layers for the affected layers."
    )

