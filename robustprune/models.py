"""Model registry, as in timm: ``@register_model`` entry points, ``create_model``, ``list_models``.

Our models take inputs in [0, 1] and normalize internally (a :class:`Normalize` first
layer with the dataset's mean/std). ``timm:<name>`` and ``torchvision:<name>`` pass through
to those libraries with random weights (nothing is downloaded) and are wrapped with a
Normalize layer when ``mean``/``std`` are given.

Every created model records how it was built in ``model.robustprune_spec`` (a
:class:`ModelSpec`): the registry name, keyword arguments and input shape. Pruning uses it
to infer example inputs, checkpoints use it to rebuild the architecture.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError, UnknownNameError
from robustprune.layers import LowRankLinear, Normalize

__all__ = [
    "ModelSpec",
    "register_model",
    "create_model",
    "list_models",
    "model_spec",
    "NormalizedModel",
    "FCN",
    "CNNSmall",
    "ResNetCifar",
    "VGGCifar",
]


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

    def decorator(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__.replace("_", "-")
        if key in _REGISTRY:
            raise InvalidArgumentError(f"A model named '{key}' is already registered.")
        _REGISTRY[key] = _Entry(f, input_shape, min_size)
        return f

    return decorator(fn) if fn is not None else decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (not the ``timm:``/``torchvision:`` passthroughs), sorted."""
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
    """Build a registered model, or ``timm:<name>`` / ``torchvision:<name>`` with random weights.

    Args:
        name: a name from :func:`list_models`, or a ``timm:``/``torchvision:`` passthrough.
        num_classes: size of the classifier output.
        input_shape: ``(C, H, W)`` the model will see (defaults to the entry's own).
        mean, std: per-channel input statistics for the internal Normalize layer.
        **kwargs: architecture options (``width``, ``depth``, ``rank``...).
    """
    if num_classes < 1:
        raise InvalidArgumentError(f"num_classes must be >= 1, got {num_classes}.")
    record = dict(kwargs)
    if mean is not None:
        record["mean"] = [float(m) for m in mean]
    if std is not None:
        record["std"] = [float(s) for s in std]
    if name.startswith("timm:") or name.startswith("torchvision:"):
        model, shape = _create_passthrough(name, num_classes, input_shape, kwargs)
        if mean is not None or std is not None:
            model = NormalizedModel(Normalize(mean or [0.0] * shape[0], std or [1.0] * shape[0]), model)
    else:
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
    record_kwargs = {"num_classes": num_classes, **record}
    model.robustprune_spec = ModelSpec(name, record_kwargs, tuple(shape))
    return model


def model_spec(model: nn.Module) -> ModelSpec | None:
    """The :class:`ModelSpec` recorded by :func:`create_model`, if any."""
    spec = getattr(model, "robustprune_spec", None)
    return spec if isinstance(spec, ModelSpec) else None


def _create_passthrough(
    name: str, num_classes: int, input_shape: Sequence[int] | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, tuple[int, ...]]:
    lib, _, arch = name.partition(":")
    if lib == "timm":
        import timm

        if not timm.is_model(arch):
            raise UnknownNameError(f"timm has no model '{arch}' (see timm.list_models()).")
        extra = dict(kwargs)
        if input_shape is not None and "img_size" not in extra and _timm_takes_img_size(arch):
            extra["img_size"] = int(input_shape[-1])
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        shape = tuple(input_shape or cfg.get("input_size", (3, 224, 224)))
        return model, shape
    import torchvision

    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as exc:
        raise UnknownNameError(
            f"torchvision has no model '{arch}' (see torchvision.models.list_models())."
        ) from exc
    return model, tuple(input_shape or (3, 224, 224))


def _timm_takes_img_size(arch: str) -> bool:
    return any(k in arch for k in ("vit", "deit", "swin", "beit", "eva"))


class NormalizedModel(nn.Module):
    """``net(normalize(x))``: puts a Normalize layer in front of any model."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def get_classifier(self) -> nn.Module | None:
        getter = getattr(self.net, "get_classifier", None)
        return getter() if callable(getter) else None


def _normalize(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int) -> Normalize:
    return Normalize(mean or [0.0] * channels, std or [1.0] * channels)


# --------------------------------------------------------------------------- FCN


class FCN(nn.Module):
    """Fully connected ReLU network: ``depth`` hidden layers of ``width`` units, then a head.

    With ``rank``, every hidden layer after the first input layer is a :class:`LowRankLinear`
    ``W = B @ A`` of that rank (the first layer too when ``lowrank_first``)."""

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        width: int = 256,
        depth: int = 2,
        bias: bool = True,
        rank: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise InvalidArgumentError(f"FCN needs depth >= 1 and width >= 1, got {depth}, {width}.")
        self.normalize = _normalize(mean, std, int(input_shape[0]))
        fan_in = int(torch.tensor(list(input_shape)).prod())
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            d = fan_in if i == 0 else width
            if rank is None:
                layers.append(nn.Linear(d, width, bias=bias))
            else:
                layers.append(LowRankLinear(d, width, min(rank, d, width), bias=bias))
            layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


@register_model(input_shape=(1, 8, 8))
def fcn(num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), **kwargs: Any) -> FCN:
    """FCN (``width``, ``depth``, ``bias``): the paper's MNIST model family."""
    return FCN(num_classes, input_shape, **kwargs)


@register_model(name="lowrank-fcn", input_shape=(1, 8, 8))
def lowrank_fcn(
    num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), rank: int = 8, **kwargs: Any
) -> FCN:
    """FCN whose hidden layers are ``W = B @ A`` of rank ``rank`` (the paper's rank sweep)."""
    return FCN(num_classes, input_shape, rank=rank, **kwargs)


# --------------------------------------------------------------------------- CNN


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class CNNSmall(nn.Module):
    """Conv-BN-ReLU stages with 2x2 max-pooling between stages, global average pooling and
    a Linear head; for 8x8 to 32x32 inputs. A sequential chain."""

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = _normalize(mean, std, int(input_shape[0]))
        layers: list[nn.Module] = []
        c = int(input_shape[0])
        for s, w in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += _conv_bn_relu(c, int(w))
                c = int(w)
            if s < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


@register_model(name="cnn-small", input_shape=(1, 8, 8), min_size=4)
def cnn_small(num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), **kwargs: Any) -> CNNSmall:
    """Small conv-BN-ReLU CNN (``widths``, ``convs_per_stage``) for digits up to CIFAR size."""
    return CNNSmall(num_classes, input_shape, **kwargs)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, four stages of BasicBlocks."""

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = _normalize(mean, std, int(input_shape[0]))
        self.conv1 = nn.Conv2d(int(input_shape[0]), width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        c = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stage = [BasicBlock(c, c_out, stride=1 if i == 0 else 2)]
            stage += [BasicBlock(c_out, c_out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            c = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model(name="resnet18-cifar", input_shape=(3, 32, 32), min_size=8)
def resnet18_cifar(
    num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), **kwargs: Any
) -> ResNetCifar:
    """ResNet-18 for CIFAR (3x3 stem, no max-pool); ``width`` scales all stages."""
    return ResNetCifar(num_classes, input_shape, blocks=(2, 2, 2, 2), **kwargs)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGGCifar(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: conv-BN-ReLU blocks, five max-pools, a Linear
    head. ``width_mult`` scales every conv width. A sequential chain."""

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        cfg: Sequence[int | str] = _VGG16,
        width_mult: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = _normalize(mean, std, int(input_shape[0]))
        layers: list[nn.Module] = []
        c = int(input_shape[0])
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                w = max(1, int(round(int(v) * width_mult)))
                layers += _conv_bn_relu(c, w)
                c = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


@register_model(name="vgg16-cifar", input_shape=(3, 32, 32), min_size=32)
def vgg16_cifar(
    num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), **kwargs: Any
) -> VGGCifar:
    """VGG-16 with BatchNorm for CIFAR (``width_mult`` scales the widths)."""
    return VGGCifar(num_classes, input_shape, **kwargs)
