"""Folding eval-mode BatchNorm and the input normalization into the adjacent weights.

Norms and bounds (DESIGN.md, "Definitions") are computed on the folded copy, so that they
describe the map from raw inputs in [0, 1] to logits. BatchNorm is folded with torch's own
:func:`torch.nn.utils.fusion.fuse_conv_bn_weights` / ``fuse_linear_bn_weights``; the
input normalization (:class:`~robustprune.layers.Normalize`) with the code below: the
first layer's input columns are scaled by ``1/std``; an unpadded conv or a Linear takes the
shift ``-W' mean`` into its bias, a padded conv keeps its padding behind a
:class:`~robustprune.layers.Center` (``x - mean``), so that its linear part stays the
zero-padded convolution at the model's input shape.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers.graph import describe, node_kind, trace
from robustprune.layers.modules import Center, LowRankLinear, Normalize, get_submodule_parent

__all__ = ["fold_batchnorm", "fold_for_analysis"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eval-mode BatchNorm that directly follows a Linear or
    Conv2d folded into that layer's weight and bias (the BN becomes Identity). Exact in
    eval mode: ``W' = W * g/sqrt(v+e)``, ``b' = (b - m) * g/sqrt(v+e) + beta``."""
    _check_module(model, "fold_batchnorm")
    folded = copy.deepcopy(model).eval()
    graph = trace(folded)
    modules = dict(folded.named_modules())
    with torch.no_grad():
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(
                modules[str(node.target)], (nn.BatchNorm1d, nn.BatchNorm2d)
            ):
                continue
            inputs = node.all_input_nodes
            src = inputs[0] if inputs else None
            if src is None or src.op != "call_module" or len(src.users) != 1:
                continue
            layer = modules[str(src.target)]
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                continue
            _fold_bn_into(layer, modules[str(node.target)])
            parent, attr = get_submodule_parent(folded, str(node.target))
            setattr(parent, attr, nn.Identity())
    return folded


def _fold_bn_into(layer: nn.Linear | nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Replace ``layer``'s weight and bias by those of ``bn(layer(x))`` (eval mode)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ModelNotSupportedError(
            "Cannot fold a BatchNorm without running statistics (track_running_stats=False)."
        )
    # a BN without affine parameters scales by 1 and shifts by 0
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
    fuse = fuse_conv_bn_weights if isinstance(layer, nn.Conv2d) else fuse_linear_bn_weights
    weight, bias = fuse(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, gamma, beta)
    bias.requires_grad_(layer.weight.requires_grad)  # a new bias trains like the weight
    layer.weight, layer.bias = weight, bias


def fold_for_analysis(model: nn.Module) -> nn.Module:
    """A copy with eval-mode BatchNorm folded into the adjacent layers and the model's
    :class:`Normalize` folded into the first layer (``W' = W / std`` per input channel, the
    bias shifted by ``-W' mean``). Outputs are preserved (up to rounding): a padded first
    convolution keeps its padding and gets a :class:`Center` (``x - mean``) in place of the
    Normalize, since ``conv_pad(W / std, x - mean) = conv_pad(W, (x - mean) / std)``; its
    linear part is then the zero-padded convolution at the model's input shape, whose norm
    is the one reported. Norms and bounds are computed on this copy, so they describe the map
    from raw inputs in [0, 1] to logits. :func:`robustprune.analysis.analyze` checks that the
    copy computes the model's function on the example inputs."""
    _check_module(model, "fold_for_analysis")
    folded = fold_batchnorm(model)
    graph = trace(folded)
    modules = dict(folded.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], Normalize):
            continue
        norm = modules[str(node.target)]
        # find the single layer consuming the normalized input through flatten/reshape only
        current, flat = node, False
        while len(current.users) == 1:
            (user,) = current.users
            kind = node_kind(user, modules)
            if kind == "layer":
                _fold_normalize_into(folded, norm, str(node.target), modules[str(user.target)], flat)
                break
            if kind == "pass" and describe(user) in ("flatten", "view", "reshape") or (
                user.op == "call_module" and isinstance(modules[str(user.target)], nn.Flatten)
            ):
                flat, current = True, user
                continue
            break
    return folded


def _fold_normalize_into(
    model: nn.Module, norm: Normalize, norm_name: str, layer: nn.Module, flat: bool
) -> None:
    mean = norm.mean.flatten()
    std = norm.std.flatten()
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d) and not flat:
            delta, replacement = _fold_into_conv(layer, mean, std)
            if delta is None:  # a padded conv: the shift stays in front of it
                parent, attr = get_submodule_parent(model, norm_name)
                setattr(parent, attr, replacement)
                return
        elif isinstance(layer, (nn.Linear, LowRankLinear)):
            delta, replacement = _fold_into_linear(layer, mean, std), nn.Identity()
        else:
            raise ModelNotSupportedError(
                f"Cannot fold normalization into a {type(layer).__name__}."
            )
        biased = layer.b if isinstance(layer, LowRankLinear) else layer
        if biased.bias is None:
            biased.bias = nn.Parameter(-delta)
        else:
            biased.bias.sub_(delta)
    parent, attr = get_submodule_parent(model, norm_name)
    setattr(parent, attr, replacement)


def _fold_into_conv(
    layer: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor | None, nn.Module]:
    """Scale the conv's input channels by ``1/std``; ``(bias shift, Identity)`` for an
    unpadded conv, ``(None, Center(mean))`` for a padded one (which keeps its padding)."""
    if layer.groups != 1:
        raise ModelNotSupportedError(
            "Folding normalization into a grouped first convolution is not supported."
        )
    padding = layer.padding
    if isinstance(padding, str) or layer.padding_mode != "zeros":
        raise ModelNotSupportedError(
            "Folding normalization needs a first conv with numeric zero padding."
        )
    if any(int(p) > 0 for p in padding):
        layer.weight.div_(std.view(1, -1, 1, 1))
        return None, Center(mean)
    shift = (layer.weight / std.view(1, -1, 1, 1)) * mean.view(1, -1, 1, 1)
    layer.weight.div_(std.view(1, -1, 1, 1))
    return shift.sum(dim=(1, 2, 3)), nn.Identity()


def _fold_into_linear(
    layer: nn.Linear | LowRankLinear, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Scale the Linear's input columns by ``1/std`` (per channel); the bias shift."""
    fan_in = layer.in_features
    channels = mean.numel()
    if fan_in % channels:
        raise ModelNotSupportedError(
            f"Cannot fold a {channels}-channel normalization into a Linear with "
            f"{fan_in} inputs."
        )
    per = fan_in // channels
    mean_f = mean.repeat_interleave(per)
    std_f = std.repeat_interleave(per)
    # W = B @ A for a LowRankLinear: scaling the columns of A scales those of W
    scaled = layer.a if isinstance(layer, LowRankLinear) else layer
    scaled.weight.div_(std_f.view(1, -1))
    return layer.weight @ mean_f


def _check_module(model: object, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"{what} needs a torch.nn.Module, got {type(model).__name__}.", argument="model")
