"""What is prunable and how a weight is matricized.

Matricization (DESIGN.md): rows are output units. A Linear weight ``W`` is ``h x d``; a
Conv2d weight ``(out, in/groups, kh, kw)`` becomes ``out x (in/groups*kh*kw)``; a
:class:`LowRankLinear` contributes its effective product ``B @ A``.

The modules robustprune adds to models (:class:`Normalize`, :class:`LowRankLinear`,
:class:`MeanPad`, :class:`Center`) live here, with the tables of op types that pass a
layer's output on to the next layer (:data:`PASS_MODULES`, :data:`PASS_FUNCTIONS`,
:data:`PASS_METHODS`) and of activations (:data:`RELU_LIKE`, :data:`ACTIVATION_FUNCTIONS`, :data:`ACTIVATION_METHODS`),
which :mod:`robustprune.layers.graph` reads.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustprune.errors import InvalidArgumentError, ModelNotSupportedError

__all__ = [
    "Normalize",
    "LowRankLinear",
    "MeanPad",
    "Center",
    "PRUNABLE_TYPES",
    "RELU_LIKE",
    "POOL_TYPES",
    "PASS_MODULES",
    "PASS_FUNCTIONS",
    "PASS_METHODS",
    "ACTIVATION_FUNCTIONS",
    "ACTIVATION_METHODS",
    "is_prunable",
    "prunable_layers",
    "matricize",
    "classifier_head",
    "first_layer",
    "get_submodule_parent",
]


class Normalize(nn.Module):
    """Input normalization ``(x - mean) / std`` living inside the model (inputs stay in [0, 1]).

    ``mean`` and ``std`` hold one value per channel. Images ``(N, C, H, W)`` (and any
    ``(N, C, ...)``) are normalized per channel; flat inputs ``(N, C*H*W)`` (channel-major, as ``x.flatten(1)`` lays them
    out) per feature, each channel's statistics over its ``H*W`` features, so that the
    normalization is the same function of the pixels in both layouts (and the one that
    :func:`robustprune.layers.fold_for_analysis` folds into the first layer). With a single
    channel the statistics are scalars and any input shape is accepted; with several, other
    shapes are refused."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t, std_t = _statistics(mean, "mean"), _statistics(std, "std")
        if mean_t.shape != std_t.shape:
            raise InvalidArgumentError(
                f"Normalize needs mean and std of the same length (one per channel), "
                f"got {len(mean_t)} and {len(std_t)}."
            )
        if not std_t.is_meta and torch.any(std_t <= 0):
            raise InvalidArgumentError(f"Normalize needs a positive std, got {std_t.tolist()}.", argument="std")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return (x - self.mean) / self.std
        channels = self.mean.numel()
        if channels == 1:  # scalar statistics broadcast over any shape
            return (x - self.mean.flatten()[0]) / self.std.flatten()[0]
        if x.ndim >= 3 and x.shape[1] == channels:  # (N, C, *): per channel
            shape = (1, channels) + (1,) * (x.ndim - 2)
            return (x - self.mean.view(shape)) / self.std.view(shape)
        if x.ndim != 2 or x.shape[1] % channels:
            raise InvalidArgumentError(
                f"Normalize has statistics for {channels} channels: it takes inputs (N, {channels}, ...) "
                f"or flat inputs (N, {channels}*H*W), got shape {tuple(x.shape)}."
            )
        per = x.shape[1] // channels  # channel-major: each channel's H*W features in a row
        mean = self.mean.flatten().repeat_interleave(per)
        std = self.std.flatten().repeat_interleave(per)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _statistics(values: Sequence[float], what: str) -> torch.Tensor:
    """Per-channel statistics: a non-empty sequence of finite real numbers, float32."""
    bad = isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable)
    if not bad:
        items = list(values.flatten()) if isinstance(values, torch.Tensor) else list(values)
        bad = not items or any(
            isinstance(v, bool) or not isinstance(v, (numbers.Real, torch.Tensor)) for v in items
        )
    if bad:
        raise InvalidArgumentError(
            f"Normalize needs {what} as a non-empty list of numbers (one per channel), got {values!r}.",
            argument=what,
        )
    t = torch.as_tensor([float(v) for v in items], dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise InvalidArgumentError(f"Normalize needs a finite {what}, got {t.tolist()}.", argument=what)
    return t


class LowRankLinear(nn.Module):
    """A Linear layer parameterised as ``W = B @ A`` with rank ``r`` (``A: r x d``, ``B: h x r``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        sizes = {"in_features": in_features, "out_features": out_features, "rank": rank}
        for what, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InvalidArgumentError(
                    f"LowRankLinear {what} must be a whole number >= 1, got {value!r}.", argument=what
                )
        if not 1 <= rank <= min(in_features, out_features):
            raise InvalidArgumentError(
                f"LowRankLinear rank must be in [1, {min(in_features, out_features)}], got {rank}."
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.a = nn.Linear(in_features, rank, bias=False)
        self.b = nn.Linear(rank, out_features, bias=bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.b.weight @ self.a.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.b.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class MeanPad(nn.Module):
    """Pads an image with its per-channel ``mean`` instead of zero.

    Zero padding of the normalized input equals mean padding of the raw input. Earlier
    versions of :func:`robustprune.layers.fold_for_analysis` put it in front of an unpadded
    first convolution; the fold now leaves a :class:`Center` and keeps the conv's padding, so
    that the conv's norm is measured on the map of the real input. Still recognized by the
    analysis (a 1-Lipschitz op).
    """

    def __init__(self, mean: torch.Tensor, padding: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().view(1, -1, 1, 1))
        self.padding = tuple(int(p) for p in padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        return F.pad(x - self.mean, (pw, pw, ph, ph)) + self.mean


class Center(nn.Module):
    """Subtracts a per-channel ``mean`` from an image: ``x - mean`` (a translation, 1-Lipschitz).

    What :func:`robustprune.layers.fold_for_analysis` leaves in place of a Normalize that
    feeds a padded convolution: the conv keeps its padding and takes the ``1/std`` scaling,
    so that ``conv(center(x))`` is the original map exactly and its linear part is the
    zero-padded convolution at the model's input shape."""

    def __init__(self, mean: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, LowRankLinear)

#: activations treated as ReLU-like masks (elementwise, pass-through for connectivity)
RELU_LIKE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU
)
#: pooling modules a consecutive pair may pass through
POOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
#: modules that pass a layer's output on to the next layer (BatchNorm, activations,
#: pooling, dropout, flattening)
PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.Identity,
    *RELU_LIKE,
    *POOL_TYPES,
)
#: the functional counterparts of :data:`PASS_MODULES`
PASS_FUNCTIONS = frozenset({
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.dropout,
    torch.flatten,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
})
#: tensor methods that pass a layer's output on (``x.relu()``, ``x.view(n, -1)``, ...)
PASS_METHODS = frozenset({"relu", "flatten", "view", "reshape", "relu_"})
#: functional activations (the ops that ``D = I`` replaces in identity-mode alignment)
ACTIVATION_FUNCTIONS = frozenset(
    {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish}
)
#: activation tensor methods
ACTIVATION_METHODS = frozenset({"relu", "relu_"})


def is_prunable(module: nn.Module) -> bool:
    """True for the layer types whose rows (output units) robustprune measures and prunes."""
    return isinstance(module, PRUNABLE_TYPES)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear, Conv2d (grouped and depthwise included) and
    LowRankLinear, in registration order. The factors inside a LowRankLinear are not listed
    separately: the pair is one layer with weight ``B @ A``."""
    out: list[tuple[str, nn.Module]] = []
    inside_lowrank: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_lowrank):
            continue
        if isinstance(module, LowRankLinear):
            inside_lowrank.append(name)
        if is_prunable(module):
            out.append((name, module))
    return out


def matricize(layer: nn.Module | torch.Tensor) -> torch.Tensor:
    """The weight as an ``out x fan_in`` matrix (rows = output units).

    Linear ``h x d`` as is; Conv2d ``(out, in/groups, kh, kw) -> out x (in/groups*kh*kw)``;
    LowRankLinear its product ``B @ A``. A raw tensor is reshaped the same way.
    """
    if not isinstance(layer, torch.Tensor) and not is_prunable(layer):
        # ConvTranspose2d (rows = input channels), Conv1d/Conv3d (other operators), Embedding...
        # would be matricized silently wrong: their norms are not those of this reshape
        raise ModelNotSupportedError(
            f"{type(layer).__name__} is not a Linear, Conv2d or LowRankLinear layer; robustprune measures "
            "and prunes only those (pass one of them, or its weight tensor)."
        )
    weight = layer if isinstance(layer, torch.Tensor) else getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelNotSupportedError(
            f"{type(layer).__name__} has no weight tensor to matricize (its weight is {type(weight).__name__})."
        )
    if weight.ndim < 2:
        raise InvalidArgumentError(
            f"Cannot matricize a weight of shape {tuple(weight.shape)}: need at least 2 dims."
        )
    if weight.is_meta:
        raise InvalidArgumentError("The weight is on the meta device (no values); materialize it first.")
    if weight.numel() == 0:
        raise InvalidArgumentError(f"The weight is empty (shape {tuple(weight.shape)}); nothing to measure.")
    return weight.reshape(weight.shape[0], -1)


def classifier_head(model: nn.Module) -> nn.Module | None:
    """The classifier head: timm's ``get_classifier()``, else the last Linear registered,
    else the last prunable layer. ``None`` when the model has no prunable layer."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Module) and is_prunable(head):
            return head
    for module in model.modules():
        getter = getattr(module, "get_classifier", None)
        if module is not model and callable(getter):
            head = getter()
            if isinstance(head, nn.Module) and is_prunable(head):
                return head
    layers = prunable_layers(model)
    linears = [m for _, m in layers if isinstance(m, (nn.Linear, LowRankLinear))]
    if linears:
        return linears[-1]
    return layers[-1][1] if layers else None


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first prunable layer in registration order (the one that sees the input)."""
    layers = prunable_layers(model)
    return layers[0] if layers else None


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(parent, attribute)`` such that ``getattr(parent, attribute)`` is ``model.name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr
