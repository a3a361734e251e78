"""Convolutional models for 8x8 to 32x32 inputs: :class:`CNNSmall`, :class:`ResNetCifar`
(ResNet-18) and :class:`VGGCifar` (VGG-16 with BatchNorm)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustprune._inputs import check_int
from robustprune.errors import InvalidArgumentError
from robustprune.models._normalize import normalize_layer
from robustprune.models._registry import register_model

__all__ = ["CNNSmall", "BasicBlock", "ResNetCifar", "VGGCifar", "cnn_small", "resnet18_cifar", "vgg16_cifar"]


def _check_widths(name: str, values: Any, *, length: int | None = None) -> tuple[int, ...]:
    """``values`` as a tuple of positive ints (of ``length`` entries, when given)."""
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) >= 1 and all(
        not isinstance(v, bool) and isinstance(v, numbers.Integral) and v >= 1 for v in values
    )
    if not ok or (length is not None and len(values) != length):
        count = f"{length}" if length is not None else "one or more"
        raise InvalidArgumentError(f"{name} must be {count} positive integers, got {values!r}.", argument=name)
    return tuple(int(v) for v in values)


def _check_pools(model: str, pools: int, input_shape: Sequence[int]) -> None:
    """Refuse more 2x2 max-pools than the input's spatial size allows."""
    side = min(int(s) for s in input_shape[1:]) if len(input_shape) >= 3 else None
    if side is not None and side // 2**pools < 1:
        raise InvalidArgumentError(
            f"{model} with {pools} 2x2 max-pools needs inputs of at least {2**pools}x{2**pools}, "
            f"got {tuple(input_shape)}; use fewer stages or larger inputs."
        )


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
        widths = _check_widths("widths", widths)
        check_int("convs_per_stage", convs_per_stage, low=1)
        _check_pools("CNNSmall", len(widths) - 1, input_shape)
        self.normalize = normalize_layer(mean, std, int(input_shape[0]))
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
        check_int("width", width, low=1, why="the channels of the first stage, 64 for ResNet-18")
        blocks = _check_widths("blocks", blocks, length=4)
        self.normalize = normalize_layer(mean, std, int(input_shape[0]))
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
        ok = isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool)
        if not (ok and math.isfinite(width_mult) and width_mult > 0):
            raise InvalidArgumentError(f"width_mult must be a finite number > 0, got {width_mult!r}.",
                                       argument="width_mult")
        if isinstance(cfg, str) or not isinstance(cfg, Sequence) or not cfg or not all(
            v == "M" or (not isinstance(v, bool) and isinstance(v, int) and v >= 1) for v in cfg
        ):
            raise InvalidArgumentError(
                f"cfg must list positive conv widths and 'M' (max-pool), got {cfg!r}.", argument="cfg"
            )
        _check_pools("VGGCifar", sum(v == "M" for v in cfg), input_shape)
        self.normalize = normalize_layer(mean, std, int(input_shape[0]))
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
