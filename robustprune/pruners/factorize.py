"""Low-rank factorization of a layer: its exact SVD and the rank-r replacement.

For a matricized weight ``W = U diag(σ) V^T`` (rows = output units) the replacement of

- a Linear ``h x d`` is a :class:`~robustprune.layers.LowRankLinear` (``A = sqrt(Σ_r) V_r^T``,
  ``d -> r`` without bias, then ``B = U_r sqrt(Σ_r)``, ``r -> h`` with the original bias);
- a Conv2d is ``Sequential(kh x kw conv in -> r`` (same stride, padding, dilation), ``1x1
  conv r -> out`` with the original bias``)``,

and computes exactly the rank-r truncation ``W_r x + b``. Grouped and depthwise
convolutions are not factorized.
"""

from __future__ import annotations

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.layers import LowRankLinear, matricize

__all__ = ["factorized_layer", "svd", "saves_params"]


def svd(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD ``W = U diag(σ) V^T`` of the matricized weight in float64 (computed on
    the tall orientation, which LAPACK handles much faster)."""
    w = matricize(layer).detach().to("cpu", torch.float64)
    if w.shape[0] >= w.shape[1]:
        return torch.linalg.svd(w, full_matrices=False)
    u, s, vh = torch.linalg.svd(w.T, full_matrices=False)
    return vh.T, s, u.T


def saves_params(layer: nn.Module, rank: int) -> bool:
    """Whether the rank-``rank`` factors have fewer parameters than the layer
    (``r (h + d) < h d``, resp. ``r (in kh kw + out) < out in kh kw``)."""
    if isinstance(layer, nn.Linear):
        h, d = layer.out_features, layer.in_features
        return rank * (h + d) < h * d
    kh, kw = layer.kernel_size
    return rank * (layer.in_channels * kh * kw + layer.out_channels) < layer.out_channels * layer.in_channels * kh * kw


def factorized_layer(
    layer: nn.Module,
    rank: int,
    u: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    vh: torch.Tensor | None = None,
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The rank-``rank`` replacement of a Linear (:class:`LowRankLinear`) or Conv2d
    (``Sequential(kxk conv to rank, 1x1 conv)``). With the SVD factors ``u, sigma, vh`` of
    the matricized weight, the replacement computes exactly ``W_r x + b``; without them its
    parameters are uninitialized (zeros), to be filled from a state dict. ``device`` defaults
    to the layer's (``"meta"`` builds the structure only). Mode and ``requires_grad`` follow
    the layer."""
    weight = layer.weight
    device = weight.device if device is None else torch.device(device)
    with torch.device("meta"):
        if isinstance(layer, nn.Linear):
            new: nn.Module = LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
            first, second = new.a, new.b
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
            first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, bias=False,
                              padding_mode=layer.padding_mode)
            second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
            new = nn.Sequential(first, second)
        else:
            raise InvalidArgumentError(
                f"Only Linear and ungrouped Conv2d layers can be factorized, got {type(layer).__name__}."
            )
    new = new.to(dtype=weight.dtype)
    if device.type != "meta":
        new = new.to_empty(device=device)
        if u is not None and sigma is not None and vh is not None:
            root = sigma[:rank].sqrt()
            a = (root[:, None] * vh[:rank]).to(device=device, dtype=weight.dtype)
            b = (u[:, :rank] * root[None, :]).to(device=device, dtype=weight.dtype)
            with torch.no_grad():
                first.weight.copy_(a.reshape(first.weight.shape))
                second.weight.copy_(b.reshape(second.weight.shape))
                if layer.bias is not None:
                    second.bias.copy_(layer.bias.detach())
        else:
            with torch.no_grad():
                for p in new.parameters():
                    p.zero_()
    for p in new.parameters():
        p.requires_grad_(weight.requires_grad)
    new.train(layer.training)
    return new
