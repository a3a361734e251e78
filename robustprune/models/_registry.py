"""The model registry, as in timm: ``@register_model`` entry points, :func:`create_model`,
:func:`list_models`, and the :class:`ModelSpec` every created model records."""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from robustprune._inputs import check_int
from robustprune.errors import InvalidArgumentError, UnknownNameError
from robustprune.models._normalize import NormalizedModel, normalize_layer
from robustprune.models.passthrough import PREFIXES, create_passthrough, list_passthrough
from robustprune.models.weights import WEIGHT_KEYWORDS

__all__ = ["ModelSpec", "register_model", "create_model", "list_models", "model_spec", "model_min_size"]


@dataclass(frozen=True)
class ModelSpec:
    """How a model was created: ``create_model(name, **kwargs)`` rebuilds it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    default_input_shape: tuple[int, int, int]
    min_size: int


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    name: str | None = None,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    min_size: int = 1,
) -> Any:
    """Register a model entry point ``fn(num_classes, input_shape, **kw) -> nn.Module``.

    The registry name is ``name`` or the function name with ``_`` replaced by ``-``.
    ``min_size`` is the smallest spatial input the architecture accepts.
    """

    if name is not None and (not isinstance(name, str) or not name.strip() or ":" in name):
        raise InvalidArgumentError(
            f"register_model: name must be a non-empty string without ':' (prefixes such as 'timm:' are the "
            f"libraries' own), got {name!r}.", argument="name")
    if (isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (tuple, list)) or not input_shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)):
        raise InvalidArgumentError(
            f"register_model: input_shape must be the shape of one example, e.g. (3, 32, 32), got {input_shape!r}.",
            argument="input_shape")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise InvalidArgumentError(f"register_model: min_size must be an integer >= 1, got {min_size!r}.",
                                   argument="min_size")

    def decorator(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(f):
            raise InvalidArgumentError(
                f"register_model decorates a function (num_classes, input_shape, **kw) -> nn.Module, got "
                f"{type(f).__name__}.", argument="fn")
        key = name or getattr(f, "__name__", type(f).__name__).replace("_", "-")
        if key in _REGISTRY:
            raise InvalidArgumentError(f"A model named '{key}' is already registered.")
        _REGISTRY[key] = _Entry(f, input_shape, min_size)
        return f

    return decorator(fn) if fn is not None else decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; a pattern with a library prefix (``'timm:*'``,
    ``'torchvision:resnet*'``) lists that library's models instead."""
    if pattern and ":" in pattern:
        return list_passthrough(pattern)
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_min_size(name: str) -> int:
    """Smallest spatial input size a registered model accepts."""
    return _REGISTRY[name].min_size if name in _REGISTRY else 32


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, or ``timm:<name>`` / ``torchvision:<name>`` (random weights
    unless ``pretrained=True`` for timm or ``weights="DEFAULT"`` for torchvision: then the
    library's pretrained weights, from the local cache or downloaded).

    Args:
        name: a name from :func:`list_models`, or a ``timm:``/``torchvision:`` passthrough.
        num_classes: size of the classifier output.
        input_shape: ``(C, H, W)`` the model will see (defaults to the entry's own).
        mean, std: per-channel input statistics for the internal Normalize layer.
        **kwargs: architecture options (``width``, ``depth``, ``rank``...); for the
            passthroughs also ``pretrained`` / ``weights`` (not recorded in the model's
            spec: a saved model carries its weights, and reloading it downloads nothing).

    Raises:
        WeightsError: pretrained weights asked for, offline and not in the local cache.
    """
    _check_create_arguments(name, num_classes, input_shape, mean, std)
    record = {k: v for k, v in kwargs.items() if not (name.startswith(PREFIXES) and k in WEIGHT_KEYWORDS)}
    if mean is not None:
        record["mean"] = [float(m) for m in mean]
    if std is not None:
        record["std"] = [float(s) for s in std]
    if name.startswith(PREFIXES):
        model, shape = create_passthrough(name, num_classes, input_shape, kwargs)
        if mean is not None or std is not None:
            model = NormalizedModel(normalize_layer(mean, std, shape[0]), model)
    else:
        model, shape = _create_registered(name, num_classes, input_shape, mean, std, kwargs)
    record_kwargs = {"num_classes": num_classes, **record}
    model.robustprune_spec = ModelSpec(name, record_kwargs, tuple(shape))
    return model


def model_spec(model: nn.Module) -> ModelSpec | None:
    """The :class:`ModelSpec` recorded by :func:`create_model`, if any."""
    spec = getattr(model, "robustprune_spec", None)
    return spec if isinstance(spec, ModelSpec) else None


def _check_create_arguments(
    name: Any, num_classes: Any, input_shape: Any, mean: Any, std: Any
) -> None:
    """Refuse a bad name, class count, input shape or normalization before building."""
    if not isinstance(name, str):
        raise UnknownNameError(f"The model name must be a string, got {type(name).__name__}.")
    check_int("num_classes", num_classes, low=1)
    if input_shape is not None:
        ok = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3 and all(
            not isinstance(s, bool) and isinstance(s, numbers.Integral) and s >= 1 for s in input_shape
        )
        if not ok:
            raise InvalidArgumentError(
                f"input_shape must be (C, H, W), three positive integers, got {input_shape!r}.",
                argument="input_shape",
            )
    channels = None if input_shape is None else int(input_shape[0])
    for label, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = values.tolist() if hasattr(values, "tolist") else values  # numpy, torch
        ok = isinstance(values, (tuple, list)) and len(values) >= 1 and all(
            not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(float(v)) for v in values
        )
        if ok and label == "std":
            ok = all(float(v) > 0 for v in values)
        if ok and channels is not None:
            ok = len(values) in (1, channels)
        if not ok:
            raise InvalidArgumentError(
                f"{label} must be a list of finite numbers{' > 0' if label == 'std' else ''}, one per "
                f"input channel{'' if channels is None else f' ({channels})'}, got {values!r}.",
                argument=label,
            )


def _create_registered(
    name: str,
    num_classes: int,
    input_shape: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    kwargs: dict[str, Any],
) -> tuple[nn.Module, tuple[int, ...]]:
    """A registered model and the ``(C, H, W)`` it was built for (checked against the
    entry's smallest input size)."""
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"Unknown model '{name}'. Registered models: {', '.join(list_models())}; or use "
            "'timm:<name>' / 'torchvision:<name>'."
        )
    entry = _REGISTRY[name]
    shape = tuple(int(s) for s in (input_shape or entry.default_input_shape))
    if len(shape) != 3:
        raise InvalidArgumentError(f"input_shape must be (C, H, W), got {shape}.")
    if min(shape[1:]) < entry.min_size:
        raise InvalidArgumentError(
            f"Model '{name}' needs inputs of at least {entry.min_size}x{entry.min_size}, got "
            f"{shape[1]}x{shape[2]} (for digits, use the dataset option size=32)."
        )
    try:
        model = entry.fn(num_classes=num_classes, input_shape=shape, mean=mean, std=std, **kwargs)
    except TypeError as exc:
        raise InvalidArgumentError(f"Model '{name}': {exc}.") from exc
    return model, shape
