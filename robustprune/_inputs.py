"""Example inputs: inference and checks, in one place.

Pruning (tracing and MACs counting), analysis (conv input sizes) and evaluation (MACs,
latency) all need one batch the model accepts. :func:`resolve_example_inputs` gives it, in
this order: the caller's ``example_inputs`` (checked); one example of the caller's data;
the input shape recorded by :func:`robustprune.models.create_model` (read from
``model.robustprune_spec`` without importing the model zoo); a timm model's patch embedding
or ``pretrained_cfg["input_size"]``; torchvision classifiers (3x224x224); a model whose first
prunable layer is a Linear (``in_features``). Inferred inputs are ``torch.rand`` from a
fixed-seed generator, so they are the same on every call.

Labelled data (evaluation, training, the analysis' data batch) is checked batch by batch by
one :class:`BatchValidator`: inputs floating, finite and in [0, 1], labels 1-D integer class
indices in [0, C), the same per-example shape in every batch.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError, ModelNotSupportedError

__all__ = [
    "Inputs",
    "INPUT_TOLERANCE",
    "BatchValidator",
    "split_labelled_batch",
    "check_logits",
    "first_forward",
    "check_materialized",
    "check_int",
    "check_bool",
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


# --------------------------------------------------------------------------- labelled data

#: how far outside [0, 1] an input may lie (the float rounding of a resize or a division)
INPUT_TOLERANCE = 1e-5

_RANGE_ADVICE = (
    "robustprune models take raw inputs in [0, 1] and normalize inside (create_model(..., "
    "mean=..., std=...)): drop a Normalize transform from the data, and divide 0..255 pixels by 255"
)


class BatchValidator:
    """Checks every labelled batch ``(x, y)`` of one pass over the data, where it enters.

    - inputs ``x``: a floating tensor ``(N, ...)``, ``N >= 1``, finite, in [0, 1] (up to
      :data:`INPUT_TOLERANCE`), with the same per-example shape ``x.shape[1:]`` in every batch;
    - labels ``y``: a 1-D integer tensor of ``N`` class indices in ``[0, C)``, ``C`` the
      model's number of outputs once it is known (``classes=`` or :meth:`set_classes`; before
      that, labels must be ``>= 0`` and the largest one is remembered and checked then).

    The checks are one ``aminmax`` of ``x`` and of ``y`` per batch (no host sync for CPU
    batches). A failed check raises :class:`~robustprune.errors.InvalidArgumentError` naming
    ``what`` and the batch (``where``).
    """

    def __init__(self, what: str = "data", *, classes: int | None = None) -> None:
        self.what = what
        self.classes = classes
        self.shape: tuple[int, ...] | None = None
        self.max_label: tuple[int, str] | None = None  # (largest label seen, where)

    def split(self, batch: Any, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """The checked ``(inputs, labels)`` of one batch (see :func:`split_labelled_batch`)."""
        x, y = split_labelled_batch(batch, self.what, where)
        self(x, y, where)
        return x, y

    def __call__(self, x: Any, y: Any, where: str = "") -> None:
        """Check one batch; raises InvalidArgumentError."""
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            self._fail(where, f"expected (inputs, labels) tensors, got ({type(x).__name__}, "
                       f"{type(y).__name__})")
        self._check_structure(x, y, where)
        if x.numel() == 0:
            return
        lo, hi, y_lo, y_hi = _extremes(x, y)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(x)).sum())
            self._fail(where, f"{bad} input value(s) are NaN or infinite; inputs must be finite")
        if lo < -INPUT_TOLERANCE or hi > 1 + INPUT_TOLERANCE:
            self._fail(where, f"inputs lie in [{lo:.4g}, {hi:.4g}], outside [0, 1]; {_RANGE_ADVICE}")
        if y_lo < 0:
            self._fail(where, f"a label is {int(y_lo)}; labels are class indices >= 0")
        if self.classes is not None and y_hi >= self.classes:
            self._label_error(int(y_hi), where)
        if self.max_label is None or y_hi > self.max_label[0]:
            self.max_label = (int(y_hi), where)

    def set_classes(self, classes: int) -> None:
        """The model's number of outputs: labels seen so far and later must be below it."""
        self.classes = int(classes)
        if self.max_label is not None and self.max_label[0] >= self.classes:
            self._label_error(*self.max_label)

    def _check_structure(self, x: torch.Tensor, y: torch.Tensor, where: str) -> None:
        if x.ndim < 2 or x.shape[0] == 0:
            self._fail(where, f"inputs have shape {tuple(x.shape)}; a batch is (N, ...) with N >= 1 "
                       "examples (add the batch dimension with x.unsqueeze(0))")
        if not x.is_floating_point():
            self._fail(where, f"inputs are {x.dtype}; they must be floating point in [0, 1] "
                       "(e.g. x.float() / 255 for 8-bit images)")
        if y.ndim != 1:
            hint = " (use y.view(-1))" if y.ndim == 2 and y.shape[1] == 1 else ""
            self._fail(where, f"labels have shape {tuple(y.shape)} ({y.dtype}); labels must be a 1-D "
                       f"tensor of class indices, one per example{hint}. Does the data yield "
                       "(inputs, labels) pairs?")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            self._fail(where, f"labels are {y.dtype}; labels must be integer class indices "
                       "(y.long(); one-hot labels: y.argmax(1); soft labels are not supported)")
        if y.shape[0] != x.shape[0]:
            self._fail(where, f"{x.shape[0]} inputs but {y.shape[0]} labels")
        shape = tuple(int(s) for s in x.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            self._fail(where, f"inputs of shape {shape} per example, but the first batch had "
                       f"{self.shape}; every batch must have the same per-example shape")

    def _label_error(self, label: int, where: str) -> None:
        self._fail(where, f"a label is {label}, but the model has {self.classes} outputs, so "
                   f"labels must lie in [0, {self.classes - 1}]; build the model with "
                   "num_classes= the dataset's number of classes")

    def _fail(self, where: str, problem: str) -> None:
        at = f" ({where})" if where else ""
        raise InvalidArgumentError(f"Bad batch in {self.what}{at}: {problem}.", argument="data")


def split_labelled_batch(batch: Any, what: str = "data", where: str = "") -> tuple[Any, Any]:
    """``(inputs, labels)`` of a DataLoader batch, a tuple or a list (its first two items)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    at = f" ({where})" if where else ""
    got = f"a tensor of shape {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
    raise InvalidArgumentError(
        f"Bad batch in {what}{at}: expected (inputs, labels) pairs, got {got}; wrap the data in a "
        "DataLoader over a TensorDataset(x, y).",
        argument="data",
    )


def check_logits(out: Any, n: int, *, what: str = "the model", where: str = "", finite: bool = True) -> int:
    """The number of classes of a classifier's output ``out`` for ``n`` examples: a
    floating ``(n, C)`` tensor (finite, unless ``finite=False``); else
    :class:`~robustprune.errors.ModelNotSupportedError`."""
    at = f" ({where})" if where else ""
    if not isinstance(out, torch.Tensor):
        raise ModelNotSupportedError(
            f"{what} returned a {type(out).__name__}{at}; it must return a (N, classes) tensor of "
            "logits (wrap a model with several outputs in a module that returns the logits)."
        )
    if out.ndim != 2 or out.shape[0] != n or not out.is_floating_point():
        raise ModelNotSupportedError(
            f"{what} returned a {out.dtype} tensor of shape {tuple(out.shape)} for {n} examples{at}; "
            "it must return (N, classes) floating-point logits."
        )
    if finite and not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).any(1).sum())
        raise ModelNotSupportedError(
            f"{what} returned NaN or infinite logits for {bad} of {n} examples{at}; its weights are "
            "probably not finite (check torch.isfinite on its parameters and buffers)."
        )
    return int(out.shape[1])


def first_forward(model: nn.Module, x: torch.Tensor, what: str) -> Any:
    """``model(x)`` on the first batch of the data, a shape mismatch between the data and
    the model turned into an :class:`~robustprune.errors.InvalidArgumentError`. The
    model's input :class:`~robustprune.layers.Normalize` is checked first: with per-channel
    statistics for C > 1 channels, a batch of another channel count would be broadcast
    (a grey image read as three channels) instead of failing."""
    check_channels(model, x, what)
    try:
        return model(x)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        built = input_shape_of(model)
        hint = f" (it was built for inputs of shape {built})" if built else ""
        raise InvalidArgumentError(
            f"{what}: the model cannot run on the data's inputs of shape {tuple(x.shape[1:])} per "
            f"example{hint}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            "Check that the data and the model go together.",
            argument="data",
        ) from exc


def check_channels(model: nn.Module, x: torch.Tensor, what: str) -> None:
    """Refuse inputs whose channel count differs from the per-channel statistics of the
    model's first :class:`~robustprune.layers.Normalize` (the input normalization)."""
    from robustprune.layers import Normalize

    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    channels = 0 if norm is None else int(norm.mean.numel())
    if channels > 1 and x.ndim >= 3 and int(x.shape[1]) != channels:
        raise InvalidArgumentError(
            f"{what}: the inputs have {int(x.shape[1])} channel(s) (shape {tuple(x.shape[1:])} per example) but the "
            f"model's input normalization has statistics for {channels}; they would be broadcast, not "
            "checked. Pass inputs of the model's channel count (e.g. x.expand(-1, 3, -1, -1) for grey images).",
            argument="data",
        )


def check_materialized(model: Any, what: str) -> None:
    """Refuse a model that is not an ``nn.Module`` or has parameters or buffers on the meta
    device (no values: built under ``torch.device("meta")``)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"{what} needs a torch.nn.Module, got {type(model).__name__}.",
                                   argument="model")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ModelNotSupportedError(
            f"{what} needs a model with real weights, but {type(model).__name__} has tensors on the "
            "meta device (no values); materialize it first, e.g. model.to_empty(device='cpu') "
            "and load its weights."
        )


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is ``True`` or ``False`` (not a string, number or None); else an
    :class:`~robustprune.errors.InvalidArgumentError` naming ``name``."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}.", argument=name)
    return value


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, why: str = ""
) -> int:
    """``value`` as an ``int`` when it is an integer (not a bool) in ``[low, high]``; else
    :class:`~robustprune.errors.InvalidArgumentError` naming ``name`` (``why``: the reason
    for the bounds, appended to the message)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = (
            f" in [{low}, {high}]" if low is not None and high is not None
            else f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""
        )
        reason = f" ({why})" if why else ""
        raise InvalidArgumentError(f"{name} must be an integer{bounds}{reason}, got {value!r}.", argument=name)
    return int(value)


def _extremes(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, float]:
    """``(min x, max x, min y, max y)`` with one transfer (NaN in ``x`` gives NaN)."""
    x_lo, x_hi = torch.aminmax(x.detach())
    y_lo, y_hi = torch.aminmax(y.detach())
    if x.device == y.device:
        lo, hi, ylo, yhi = torch.stack([x_lo.double(), x_hi.double(), y_lo.double(), y_hi.double()]).tolist()
        return lo, hi, ylo, yhi
    return float(x_lo), float(x_hi), float(y_lo), float(y_hi)


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None and not param.is_meta else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return device, dtype
