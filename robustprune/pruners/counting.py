"""MACs and params, counted exactly by torch-pruning's counter on throwaway clones.

Counting never touches the model: it runs on a *structural clone*, a deep copy of the
modules whose parameters and buffers are proxies, either meta tensors (shapes only: free to
trace and count, the counter only reads shapes) or aliases of the real storage. Small models
count faster for real (meta dispatch costs ~ms per op); :func:`prefer_meta` decides, and both
give identical numbers.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from robustprune._inputs import Inputs, check_example_inputs, forward, shape_str, to_meta
from robustprune.errors import InvalidArgumentError
from robustprune.pruners._checks import first_line
from robustprune.pruners._tp import macs_counter

__all__ = [
    "count_macs_params",
    "dense_count",
    "counted_forward",
    "clone_count",
    "structural_clone",
    "swap_real_modules",
    "meta_swapped",
    "prefer_meta",
    "is_meta",
    "output_signature",
]

logger = logging.getLogger(__name__)

#: above this many "parameter x input element" products a real forward costs more than a
#: shape-only one on the meta device, whose per-op Python overhead (~ms) dominates small models
META_WORTH_IT = 3e10

_SHAPE_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.Dropout, nn.Dropout2d, nn.Identity,
)


def count_macs_params(model: nn.Module, example_inputs: Inputs) -> tuple[int, int]:
    """``(MACs, params)`` per example by torch-pruning's counter
    (``tp.utils.count_ops_and_params``), run on a meta-tensor clone so that counting costs no
    arithmetic (identical numbers: the counter only reads shapes); falls back to counting
    on a real copy for models that cannot run on the meta device.

    Counted on the batch's first example (:func:`counted_forward`), so the count does not
    depend on the batch given."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"count_macs_params needs a torch.nn.Module, got {type(model).__name__}.",
                                   argument="model")
    inputs = check_example_inputs(example_inputs)
    inputs = inputs[:1] if isinstance(inputs, torch.Tensor) else tuple(t[:1] for t in inputs)
    if prefer_meta(model, inputs):
        try:
            macs, params, _ = clone_count(model, inputs, meta=True)
            return macs, params
        except Exception:  # a model with value-dependent control flow: count for real
            logger.debug("meta-device MACs count failed; counting on a real copy", exc_info=True)
    try:
        macs, params, _ = clone_count(model, inputs, meta=False)
    except Exception as exc:
        raise InvalidArgumentError(
            f"Cannot count MACs: the model does not accept example inputs of shape "
            f"{shape_str(inputs)} ({type(exc).__name__}: {first_line(exc)})."
        ) from exc
    return int(round(macs)), int(params)


def dense_count(model: nn.Module, inputs: Inputs) -> tuple[int, int, Any]:
    """``(MACs, params, output signature)`` of the unmodified model, with a clear error for
    inputs the model rejects."""
    if prefer_meta(model, inputs):
        try:
            return clone_count(model, inputs, meta=True)
        except Exception:
            pass
    clone, _ = structural_clone(model, meta=False)
    try:
        with torch.no_grad():
            out, macs, params = counted_forward(clone, inputs)
    except Exception as exc:
        raise InvalidArgumentError(
            f"The model does not accept example inputs of shape {shape_str(inputs)} "
            f"({type(exc).__name__}: {first_line(exc)}). Pass example_inputs with the shape the "
            "model expects, e.g. torch.rand(1, 3, 32, 32)."
        ) from exc
    return macs, params, output_signature(out)


def counted_forward(
    model: nn.Module, inputs: Inputs, *, shape_only: bool = False, keep_graph: bool = False
) -> tuple[Any, int, int]:
    """Forward ``model`` (a throwaway clone) under torch-pruning's MACs counter hooks;
    returns ``(output, MACs per example, params)`` exactly as ``count_ops_and_params``.

    With ``shape_only`` (meta tensors), shape-preserving modules (norms, activations,
    dropout) skip their arithmetic: the counter's hooks only read shapes, and the meta
    decompositions of these ops are what makes a meta forward slow. With ``keep_graph``
    (tracing a DependencyGraph) they return ``x.clone()``: one autograd node per module fed
    by the module's input, the same wiring torch-pruning sees for the real op (whose
    parameter leaves it skips).

    The forward runs on the batch's first example: torch-pruning's counter divides some
    ops' counts by the batch size and not others, so a larger batch gave a (slightly)
    smaller count per example; every count and output signature is that of one example."""
    inputs = inputs[:1] if isinstance(inputs, torch.Tensor) else tuple(t[:1] for t in inputs)
    patched = [m for m in model.modules() if isinstance(m, _SHAPE_PRESERVING) and "forward" not in m.__dict__] if shape_only else []
    for m in patched:
        m.forward = _cloned if keep_graph else _same_shape
    try:
        with macs_counter(model) as read:
            out = forward(model, inputs)
            macs, params = read()
    finally:
        for m in patched:
            del m.forward
    return out, int(round(macs)), int(params)


def clone_count(model: nn.Module, inputs: Inputs, *, meta: bool) -> tuple[int, int, Any]:
    """``(MACs, params, output signature)`` of ``model``, counted on a structural clone
    (meta tensors, or aliases of the real ones: identical counts)."""
    clone, _ = structural_clone(model, meta=meta)
    with torch.no_grad():
        out, macs, params = counted_forward(clone, to_meta(inputs) if meta else inputs, shape_only=meta)
    return macs, params, output_signature(out)


def structural_clone(model: nn.Module, *, meta: bool) -> tuple[nn.Module, dict[int, torch.Tensor]]:
    """A deep copy of ``model``'s modules whose parameters and buffers are proxies: meta
    tensors (``meta=True``: shapes only, free to trace) or aliases sharing the real storage.
    Returns the clone and ``{id(proxy): real tensor}`` for :func:`swap_real_modules`."""
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


def swap_real_modules(clone: nn.Module, real: Mapping[int, torch.Tensor]) -> None:
    """Put the model's own parameter and buffer objects (``{id(proxy): real}``) into the
    clone's modules, so scoring reads real weights and pruning creates new real tensors
    while the model's tensors stay untouched."""
    for m in clone.modules():
        for table in (m._parameters, m._buffers):
            for k, t in list(table.items()):
                if t is not None and id(t) in real:
                    table[k] = real[id(t)]


@contextlib.contextmanager
def meta_swapped(model: nn.Module) -> Iterator[None]:
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


def prefer_meta(model: nn.Module, inputs: Inputs) -> bool:
    """Whether to trace and count on meta tensors (big models, big inputs) rather than run
    real arithmetic on aliased weights (small ones); both give identical results."""
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    per_example = sum(t[0].numel() if t.ndim else 1 for t in tensors)
    params = sum(p.numel() for p in model.parameters())
    return params * per_example > META_WORTH_IT


def is_meta(inputs: Inputs) -> bool:
    """Whether any input tensor is on the meta device."""
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    return any(t.is_meta for t in tensors)


def output_signature(out: Any) -> Any:
    """The shapes of a model output (tensors, nested tuples/lists/dicts), as plain tuples."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(output_signature(o) for o in out)
    if isinstance(out, Mapping):
        return tuple((k, output_signature(v)) for k, v in sorted(out.items(), key=lambda kv: str(kv[0])))
    return type(out).__name__


def _same_shape(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def _cloned(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x.clone()
