"""Fully connected models: :class:`FCN` and its low-rank variant (the paper's MNIST family)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustprune._inputs import check_int
from robustprune.errors import InvalidArgumentError
from robustprune.layers import LowRankLinear
from robustprune.models._normalize import normalize_layer
from robustprune.models._registry import register_model

__all__ = ["FCN", "fcn", "lowrank_fcn"]


class FCN(nn.Module):
    """Fully connected ReLU network: ``depth`` hidden layers of ``width`` units, then a head.

    With ``rank``, every hidden layer after the first input layer is a :class:`LowRankLinear`
    ``W = B @ A`` of that rank (the first layer too when ``lowrank_first``); ``rank`` is at
    most ``width`` (a first layer with fewer inputs takes rank ``min(rank, inputs)``)."""

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        width: int = 256,
        depth: int = 2,
        bias: bool = True,
        rank: int | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_int("width", width, low=1)
        check_int("depth", depth, low=1)
        if rank is not None:
            check_int("rank", rank, low=1, high=width,
                      why=f"a LowRankLinear of rank r > width = {width} is not low rank: it has more weights than the "
                          "dense layer")
        if not isinstance(bias, bool):
            raise InvalidArgumentError(f"bias must be True or False, got {bias!r}.", argument="bias")
        self.normalize = normalize_layer(mean, std, int(input_shape[0]))
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
