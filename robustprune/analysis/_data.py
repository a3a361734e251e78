"""What :func:`robustprune.analysis.analyze` works on: the data batch and the example
inputs (each checked where it is collected), and forward passes of the model that check it
accepts them, record layer inputs or input shapes, or give the logits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from robustprune._inputs import check_channels, resolve_example_inputs
from robustprune._modes import eval_mode
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError

__all__ = [
    "collect_data",
    "example_batch",
    "check_forward",
    "input_shapes",
    "layer_inputs",
    "logits_of",
    "model_name",
]


def collect_data(
    data: Any, max_samples: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(x, y)`` from ``(x, y)``, ``x`` alone or an iterable of batches: the first
    ``max_samples`` samples on ``device`` in ``dtype`` (``y`` is ``None`` without labels).

    Refused: batches that are not tensors or ``(x, y)`` pairs, inputs without a batch
    dimension or of changing shapes, empty data, non-finite inputs or inputs outside [0, 1]
    (the analysis describes the map from raw inputs in [0, 1]: normalization lives inside
    the model), labels that are not one integer class index per input."""
    if data is None:
        return None, None
    xs, ys = _batches(data, max_samples)
    if not xs:
        raise InvalidArgumentError("data is empty.", argument="data")
    shapes = {tuple(t.shape[1:]) for t in xs}
    if len(shapes) > 1:
        raise InvalidArgumentError(
            f"data batches have different input shapes {sorted(shapes)}; give batches of one shape.",
            argument="data",
        )
    x = torch.cat([t.detach() for t in xs])[:max_samples].to(device=device, dtype=dtype)
    if x.shape[0] == 0:
        raise InvalidArgumentError("data is empty.", argument="data")
    if not torch.isfinite(x).all():
        raise InvalidArgumentError("data has non-finite inputs (NaN or inf).", argument="data")
    if x.min() < 0 or x.max() > 1:
        raise InvalidArgumentError(
            f"data inputs must lie in [0, 1] (raw images; the model normalizes internally), got "
            f"values in [{float(x.min()):.4g}, {float(x.max()):.4g}]. Scale them to [0, 1] and "
            "put the normalization inside the model (create_model(..., mean=, std=)).",
            argument="data",
        )
    if ys is None:
        return x, None
    y = torch.cat(ys)[:max_samples]
    if y.shape != x.shape[:1]:
        raise InvalidArgumentError(
            f"data labels must be one per input, got {tuple(y.shape)} for {x.shape[0]} inputs.",
            argument="data",
        )
    return x, y.to(device=device, dtype=torch.long)


def _batches(data: Any, max_samples: int) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The input tensors and the label tensors (``None`` without labels) of ``data``."""
    if isinstance(data, torch.Tensor):
        return [_inputs_tensor(data)], None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return [_inputs_tensor(data[0])], [_labels_tensor(data[1])]
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise InvalidArgumentError(
            f"data must be (x, y), x, or an iterable of (x, y) batches, got {type(data).__name__}.",
            argument="data",
        )
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    n = 0
    for batch in data:
        if isinstance(batch, torch.Tensor):
            bx, by = batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            bx, by = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            raise InvalidArgumentError(
                f"data batches must be tensors or (x, y) pairs, got {type(batch).__name__}.",
                argument="data",
            )
        xs.append(_inputs_tensor(bx))
        if by is not None:
            ys.append(_labels_tensor(by))
        n += bx.shape[0]
        if n >= max_samples:
            break
    if ys and len(ys) != len(xs):
        raise InvalidArgumentError("Some data batches have labels and some do not.", argument="data")
    return xs, (ys or None)


def _inputs_tensor(x: torch.Tensor) -> torch.Tensor:
    """A batch of inputs: a real tensor with a batch dimension."""
    if x.ndim < 2 or x.is_complex():
        raise InvalidArgumentError(
            f"data inputs must be a real batch (N, ...), got shape {tuple(x.shape)} ({x.dtype}); "
            "add a batch dimension, e.g. x.unsqueeze(0).",
            argument="data",
        )
    return x


def _labels_tensor(y: Any) -> torch.Tensor:
    """A batch of labels: integer class indices, one dimension."""
    try:
        t = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidArgumentError(
            f"data labels must be a tensor of class indices, got {type(y).__name__}.", argument="data"
        ) from exc
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise InvalidArgumentError(
            f"data labels must be integer class indices, got dtype {t.dtype}; convert them with "
            "y.long() if they are whole numbers.",
            argument="data",
        )
    if t.ndim != 1:
        raise InvalidArgumentError(
            f"data labels must be one class index per input (N,), got shape {tuple(t.shape)}.",
            argument="data",
        )
    return t


def example_batch(
    model: nn.Module, example_inputs: Any, x: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The example inputs: the caller's (checked: one finite batch), else the first data
    sample, else inferred from the model; on ``device`` in ``dtype``."""
    example = resolve_example_inputs(model, example_inputs, x)
    if isinstance(example, tuple):
        raise InvalidArgumentError(
            f"analyze takes example_inputs as one tensor (a batch of the model's inputs), got "
            f"a tuple of {len(example)} tensors.",
            argument="example_inputs",
        )
    if example.ndim < 2:
        raise InvalidArgumentError(
            f"example_inputs must be a non-empty batch (N, ...), got shape {tuple(example.shape)}; "
            "add a batch dimension, e.g. x.unsqueeze(0).",
            argument="example_inputs",
        )
    if example.is_complex() or not torch.isfinite(example).all():
        raise InvalidArgumentError(
            "example_inputs must be real and finite (no NaN or inf).", argument="example_inputs"
        )
    return example.detach().to(device=device, dtype=dtype)


def check_forward(model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    """The model's output on ``x`` (eval mode, restored): a failure names ``what``; an
    output that is not a tensor, or is not finite, is refused."""
    check_channels(model, x, what)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except Exception as exc:
        raise InvalidArgumentError(
            f"The model does not accept {what} of shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Pass inputs with the shape the "
            "model expects, e.g. torch.rand(1, 3, 32, 32) for a CIFAR model.",
            argument=what,
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise ModelNotSupportedError(
            f"analyze needs a model that returns one tensor of logits; it returned a "
            f"{type(out).__name__} on {what}."
        )
    if out.is_floating_point() and not torch.isfinite(out).all():
        raise ModelNotSupportedError(
            f"The model's outputs on {what} are not finite (NaN or inf): its weights overflow. "
            "Fix the model before analyzing it."
        )
    return out


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
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(x[i : i + 256]) for i in range(0, x.shape[0], 256)])


def model_name(model: nn.Module) -> str:
    """The registry name the model was created with, else its class name."""
    # the spec robustprune.models.create_model records (read without importing the model zoo)
    name = getattr(getattr(model, "robustprune_spec", None), "name", None)
    return name if isinstance(name, str) else type(model).__name__
