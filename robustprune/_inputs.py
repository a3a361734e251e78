"""Example inputs: inference and checks, in one place.

Pruning (tracing and MACs counting), analysis (conv input sizes) and evaluation (MACs,
latency) all need one batch the model accepts. :func:`resolve_example_inputs` gives it, in
this order: the caller's ``example_inputs`` (checked); one example of the caller's data;
the input shape recorded by :func:`robustprune.models.create_model` (read from
``model.robustprune_spec`` without importing the model zoo); a timm model's patch embedding
or ``pretrained_cfg["input_size"]``; torchvision classifiers (3x224x224); a model whose first
prunable layer is a Linear (``in_features``). Inferred inputs are ``torch.rand`` from a
fixed-seed generator, so they are the same on every call.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError

__all__ = [
    "Inputs",
    "check_example_inputs",
    "input_shape_of",
    "infer_example_inputs",
    "resolve_example_inputs",
    "forward",
    "shape_str",
    "shape_list",
    "to_meta",
]

#: what a model's forward takes: one tensor, or a tuple of positional tensors
Inputs = torch.Tensor | tuple[torch.Tensor, ...]

_EXAMPLE = "e.g. example_inputs=torch.rand(1, 3, 32, 32)"


def check_example_inputs(example_inputs: Any, what: str = "example_inputs") -> Inputs:
    """``example_inputs`` as a tensor or a tuple of tensors, each a non-empty batch."""
    if isinstance(example_inputs, torch.Tensor):
        tensors: tuple[torch.Tensor, ...] = (example_inputs,)
        out: Inputs = example_inputs
    elif (
        isinstance(example_inputs, (tuple, list))
        and example_inputs
        and all(isinstance(t, torch.Tensor) for t in example_inputs)
    ):
        tensors = tuple(example_inputs)
        out = tensors
    else:
        raise InvalidArgumentError(
            f"{what} must be a tensor (or a tuple of tensors), got "
            f"{type(example_inputs).__name__}; {_EXAMPLE}."
        )
    for t in tensors:
        if t.ndim == 0 or t.shape[0] == 0:
            raise InvalidArgumentError(
                f"{what} must be a non-empty batch with a leading batch dimension, got shape "
                f"{tuple(t.shape)}; {_EXAMPLE}."
            )
    return out


def input_shape_of(model: nn.Module) -> tuple[int, ...] | None:
    """The per-example input shape of ``model`` when it can be inferred (see the module
    docstring for the order), else ``None``."""
    spec = getattr(model, "robustprune_spec", None)
    shape = getattr(spec, "input_shape", None)
    if shape:
        return tuple(int(s) for s in shape)
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
    from robustprune.layers import LowRankLinear, prunable_layers

    layers = prunable_layers(model)
    if layers and isinstance(layers[0][1], (nn.Linear, LowRankLinear)):
        return (int(layers[0][1].in_features),)
    return None


def infer_example_inputs(model: nn.Module) -> torch.Tensor:
    """A single inferred example input for ``model`` (on its device, in its dtype); raises
    :class:`~robustprune.errors.InvalidArgumentError` when the shape cannot be inferred."""
    shape = input_shape_of(model)
    if shape is None:
        raise InvalidArgumentError(
            f"Cannot infer example inputs for {type(model).__name__}: it was not built by "
            "robustprune.models.create_model, is not a timm or torchvision classifier, and its "
            f"first layer is not a Linear. Pass example_inputs, {_EXAMPLE}."
        )
    device, dtype = _placement(model)
    gen = torch.Generator().manual_seed(0)
    return torch.rand((1, *shape), generator=gen).to(device=device, dtype=dtype)


def resolve_example_inputs(
    model: nn.Module,
    example_inputs: Any = None,
    data_example: torch.Tensor | None = None,
) -> Inputs:
    """The caller's ``example_inputs`` (checked), else the first example of
    ``data_example`` (a batch of the caller's data), else :func:`infer_example_inputs`."""
    if example_inputs is not None:
        return check_example_inputs(example_inputs)
    if data_example is not None:
        return check_example_inputs(data_example, "data")[:1]
    return infer_example_inputs(model)


def forward(model: nn.Module, inputs: Inputs) -> Any:
    """``model(*inputs)`` for a tuple, ``model(inputs)`` for a tensor."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def to_meta(inputs: Inputs) -> Inputs:
    """Meta tensors of the same shapes and dtypes (for shape-only forwards)."""
    if isinstance(inputs, torch.Tensor):
        return torch.empty_like(inputs, device="meta")
    return tuple(torch.empty_like(t, device="meta") for t in inputs)


def shape_str(inputs: Inputs) -> str:
    """``(1, 3, 32, 32)`` or ``(1, 3, 32, 32), (1, 10)``."""
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    return ", ".join(str(tuple(t.shape)) for t in inputs)


def shape_list(inputs: Inputs) -> list[int] | list[list[int]]:
    """The shapes as plain lists (for reports and recipes)."""
    if isinstance(inputs, torch.Tensor):
        return [int(s) for s in inputs.shape]
    return [[int(s) for s in t.shape] for t in inputs]


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None and not param.is_meta else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return device, dtype
