"""What :func:`robustprune.analysis.analyze` works on: checked settings, the data batch,
and forward passes of the model that record layer inputs, input shapes or logits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustprune.analysis.report import p_label
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.metrics import check_norm

__all__ = [
    "DEFAULT_DELTA",
    "check_norms",
    "check_delta",
    "collect_data",
    "check_forward",
    "input_shapes",
    "layer_inputs",
    "logits_of",
    "model_name",
]

#: budgets used for gap bounds, certified fraction and audit when ``delta`` is not given
#: (DESIGN's CIFAR budgets; pass ``delta=`` for other datasets)
DEFAULT_DELTA: dict[str, float] = {"inf": 8 / 255, "2": 0.5}


def check_norms(norms: Sequence[str]) -> tuple[str, ...]:
    """The norms as ``"2"`` / ``"inf"``, deduplicated in order, at least one."""
    if isinstance(norms, str):
        norms = (norms,)
    out = tuple(dict.fromkeys(check_norm(p) for p in norms))
    if not out:
        raise InvalidArgumentError("norms must name at least one of '2' and 'inf'.")
    return out


def check_delta(delta: float | Mapping[str, float] | None, norms: tuple[str, ...]) -> dict[str, float]:
    """One budget per norm: :data:`DEFAULT_DELTA`, the same float for each, or the mapping."""
    if delta is None:
        values = dict(DEFAULT_DELTA)
    elif isinstance(delta, Mapping):
        values = {check_norm(k): float(v) for k, v in delta.items()}
        missing = [p for p in norms if p not in values]
        if missing:
            raise InvalidArgumentError(f"delta has no budget for norm(s) {missing}; give one per norm.")
    else:
        values = {p: float(delta) for p in norms}
    for p in norms:
        if not math.isfinite(values[p]) or values[p] < 0:
            raise InvalidArgumentError(f"delta for l{p_label(p)} must be finite and >= 0, got {values[p]}.")
    return values


def collect_data(
    data: Any, max_samples: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(x, y)`` from ``(x, y)``, ``x`` alone or an iterable of batches: the first
    ``max_samples`` samples on ``device`` in ``dtype`` (``y`` is ``None`` without labels)."""
    if data is None:
        return None, None
    if isinstance(data, torch.Tensor):
        xs, ys = [data], None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        xs, ys = [data[0]], [torch.as_tensor(data[1])]
    elif isinstance(data, Iterable):
        xs, ys, n = [], [], 0
        for batch in data:
            if isinstance(batch, torch.Tensor):
                bx, by = batch, None
            elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
                bx, by = batch[0], (batch[1] if len(batch) > 1 else None)
            else:
                raise InvalidArgumentError(
                    f"data batches must be tensors or (x, y) pairs, got {type(batch).__name__}."
                )
            xs.append(bx)
            if by is not None:
                ys.append(torch.as_tensor(by))
            n += bx.shape[0]
            if n >= max_samples:
                break
        if ys and len(ys) != len(xs):
            raise InvalidArgumentError("Some data batches have labels and some do not.")
        ys = ys or None
    else:
        raise InvalidArgumentError(
            f"data must be (x, y), x, or an iterable of (x, y) batches, got {type(data).__name__}."
        )
    if not xs:
        raise InvalidArgumentError("data is empty.")
    x = torch.cat([t.detach() for t in xs])[:max_samples].to(device=device, dtype=dtype)
    y = None if ys is None else torch.cat(ys)[:max_samples].to(device=device, dtype=torch.long)
    if x.shape[0] == 0:
        raise InvalidArgumentError("data is empty.")
    if y is not None and y.shape != x.shape[:1]:
        raise InvalidArgumentError(
            f"data labels must be one per input, got {tuple(y.shape)} for {x.shape[0]} inputs."
        )
    if not torch.isfinite(x).all():
        raise InvalidArgumentError("data has non-finite inputs (NaN or inf).")
    return x, y


def check_forward(model: nn.Module, x: torch.Tensor, what: str) -> None:
    """Run the model once (eval mode, restored) on ``x``; a failure names ``what``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise InvalidArgumentError(
            f"The model does not accept {what} of shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Pass inputs with the shape the "
            "model expects, e.g. torch.rand(1, 3, 32, 32) for a CIFAR model."
        ) from exc
    finally:
        model.train(was_training)


def input_shapes(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of each of ``layers`` (by name) when the model runs on ``x``."""
    names = {id(m): n for n, m in model.named_modules()}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for layer in layers:

        def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(names[id(m)], tuple(args[0].shape[1:]))

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


class _StopForward(Exception):
    pass


def layer_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs ``layer`` receives when the model runs on ``x`` (the forward stops there)."""
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach())
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ModelNotSupportedError("A layer was never called in the forward pass.")
    return captured[0]


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs on ``x`` in eval mode (mode restored), in batches of 256."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(x[i : i + 256]) for i in range(0, x.shape[0], 256)])
    finally:
        model.train(was_training)


def model_name(model: nn.Module) -> str:
    """The registry name the model was created with, else its class name."""
    # the spec robustprune.models.create_model records (read without importing the model zoo)
    name = getattr(getattr(model, "robustprune_spec", None), "name", None)
    return name if isinstance(name, str) else type(model).__name__
