"""Input normalization: the first layer of our models, and the wrapper that puts one in
front of any other model (a ``timm:``/``torchvision:`` passthrough)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustprune.layers import Normalize

__all__ = ["NormalizedModel", "normalize_layer"]


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



def normalize_layer(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int) -> Normalize:
    """``Normalize(mean, std)`` over ``channels`` channels (mean 0 and std 1 where not given)."""
    return Normalize(mean or [0.0] * channels, std or [1.0] * channels)
