"""Network bounds of a sequential chain, for :func:`analyze` (DESIGN.md, "Lipschitz bound").

The encoder ``Phi`` is every chain layer before the head. Its naive bound is
``prod ||W^l||_p`` times the Lipschitz constants of the ops around the layers (activations,
BatchNorm left unfolded, pooling, normalization); the aligned estimate pairs the layers as
:func:`robustprune.metrics.aligned_lipschitz_bound` does. Conv l2 norms that are the
matricized ``sigma_max`` are multiplied by :func:`robustprune.metrics.conv_norm_bound_factor`
so that the bound stays valid. The gap bound takes the factor of the head's loss
(:func:`robustprune.metrics.gap_factor`: 1 for a one-logit logistic head, 2 in l-infinity
and sqrt(2) in l2 for a softmax cross-entropy head of two or more logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from robustprune.analysis.report import LayerRow, NetworkBound, bound_kinds, finite, p_label
from robustprune.errors import ModelNotSupportedError, RobustPruneError
from robustprune.layers import Center, MeanPad, Normalize
from robustprune.layers.graph import node_kind
from robustprune.metrics import (
    aligned_lipschitz_bound,
    certified_fraction,
    conv_norm_bound_factor,
    gap_bound,
    gap_factor,
    head_loss,
    naive_lipschitz_bound,
)

__all__ = ["NetworkContext", "network_bound", "op_lipschitz"]

# sup of the derivative (the Lipschitz constant) of smooth activations
_ACTIVATION_LIPSCHITZ = {nn.GELU: 1.1289, nn.SiLU: 1.0999, nn.Hardswish: 1.5}
_FUNCTION_LIPSCHITZ = {F.gelu: 1.1289, F.silu: 1.0999, F.hardswish: 1.5}


@dataclass(frozen=True)
class NetworkContext:
    """What the bounds of one model need: the folded model and its trace (``None`` when it
    could not be traced), the chain's layers (``None`` with ``chain_reason`` when the model is
    not a chain ending in its head), the report rows, the pair alignments, the mask mode, and
    the logits and labels of the data batch (``None`` without labelled data)."""

    folded: nn.Module
    graph: torch.fx.Graph | None
    chain_layers: tuple[str, ...] | None
    chain_reason: str
    rows: tuple[LayerRow, ...]
    alignments: dict[tuple[str, str], dict[str, float | None]]
    mode: str
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def network_bound(ctx: NetworkContext, p: str, delta: float) -> NetworkBound:
    """The :class:`NetworkBound` of the chain for norm ``p`` at budget ``delta``."""
    if ctx.chain_layers is None or ctx.graph is None:
        reason = ctx.chain_reason or "the model could not be traced"
        return NetworkBound(p=p, delta=delta, reason=f"no network bound: {reason}")
    modules = dict(ctx.folded.named_modules())
    try:
        segments = _chain_segments(ctx.graph, modules, ctx.chain_layers)
    except RobustPruneError as exc:
        return NetworkBound(p=p, delta=delta, reason=str(exc))
    factors = _segment_factors(segments, modules, p)
    if isinstance(factors, str):
        return NetworkBound(p=p, delta=delta, reason=factors)
    by_name = {r.name: r for r in ctx.rows}
    encoder = ctx.chain_layers[:-1]
    head = by_name[ctx.chain_layers[-1]]
    norms = [_bound_norm(ctx.folded, by_name[name], p) for name in encoder]
    # the ops before layer 1 scale the input; those after the head scale the logits
    prefix, between, suffix = factors[0], factors[1:-1], factors[-1]
    naive = prefix * naive_lipschitz_bound(norms, between)
    head_norm = head.norm(p) * suffix
    if p == "2" and head.kind == "Conv2d" and head.norm_2_operator is None:
        head_norm *= conv_norm_bound_factor(ctx.folded.get_submodule(head.name))
    loss = head_loss(head.matrix_shape[0])
    aligned, aligned_reason = None, ""
    if len(encoder) >= 2:
        pair_values = [
            ctx.alignments.get((encoder[i], encoder[i + 1]), {}).get(p) if i % 2 == 0 else None
            for i in range(len(encoder) - 1)
        ]
        missing = [f"{encoder[i]}->{encoder[i + 1]}" for i in range(0, len(encoder) - 1, 2) if pair_values[i] is None]
        if missing:
            aligned_reason = f"no l{p_label(p)} alignment for {', '.join(missing)}"
        else:
            aligned = prefix * aligned_lipschitz_bound(norms, pair_values, between)
    elif encoder:
        aligned = naive
    cert = None
    if ctx.logits is not None and ctx.labels is not None:
        cert = certified_fraction(ctx.logits, ctx.labels, delta=delta, lipschitz=naive, head_norm=head_norm)
    kind = f"estimate, {ctx.mode} masks" if aligned is not None else ""
    return NetworkBound(
        p=p,
        delta=delta,
        naive=finite(naive),
        aligned=finite(aligned),
        aligned_kind=kind,
        head_norm=finite(head_norm),
        gap=finite(gap_bound(delta, naive, head_norm, head=loss, p=p)),
        gap_aligned=None if aligned is None else finite(gap_bound(delta, aligned, head_norm, head=loss, p=p)),
        certified_fraction=cert,
        layer_norms=tuple(norms),
        between=tuple(factors),
        aligned_reason=aligned_reason,
        head_loss=loss,
        gap_factor=gap_factor(loss, p),
        kinds=bound_kinds(loss, p, kind, cert is not None),
    )


def _bound_norm(folded: nn.Module, row: LayerRow, p: str) -> float:
    """``||W||_p`` of a row as it enters the bound: a conv's matricized l2 norm times the
    overlap factor that makes it an upper bound of the operator norm."""
    if p == "2" and row.kind == "Conv2d" and row.norm_2_operator is None:
        return row.norm_2_matricized * conv_norm_bound_factor(folded.get_submodule(row.name))
    return row.norm(p)


def _segment_factors(
    segments: list[list[torch.fx.Node]], modules: dict[str, nn.Module], p: str
) -> list[float] | str:
    """The Lipschitz constant of each segment's ops, or the reason one is unknown."""
    factors: list[float] = []
    for segment in segments:
        f = 1.0
        for node in segment:
            value = op_lipschitz(node, modules, p)
            if value is None:
                return f"op '{node.name}' between layers has no known l{p_label(p)} Lipschitz constant"
            f *= value
        factors.append(f)
    return factors


def _chain_segments(
    graph: torch.fx.Graph, modules: dict[str, nn.Module], layers: tuple[str, ...]
) -> list[list[torch.fx.Node]]:
    """Ops before layer 0, between consecutive layers, and after the last layer."""
    segments: list[list[torch.fx.Node]] = [[]]
    for node in graph.nodes:
        kind = node_kind(node, modules)
        if kind == "layer":
            segments.append([])
        elif kind in ("pass", "normalize"):
            segments[-1].append(node)
    if len(segments) != len(layers) + 1:
        raise ModelNotSupportedError("The chain's layers and the traced graph disagree.")
    return segments


def op_lipschitz(node: torch.fx.Node, modules: dict[str, nn.Module], p: str) -> float | None:
    """Lipschitz constant (w.r.t. ``p``) of one pass-through op, ``None`` when unknown."""
    if node.op == "call_module":
        return _module_lipschitz(modules[str(node.target)], p)
    if node.op == "call_function":
        return _function_lipschitz(node, p)
    if node.op == "call_method":
        return 1.0 if node.target in ("relu", "relu_", "flatten", "view", "reshape") else None
    return None


def _module_lipschitz(m: nn.Module, p: str) -> float | None:
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity, MeanPad, Center, Normalize)):
        if isinstance(m, Normalize):
            return float((1.0 / m.std).max())
        return 1.0
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(m.negative_slope))
    if isinstance(m, nn.ELU):
        return max(1.0, float(m.alpha))
    for cls, value in _ACTIVATION_LIPSCHITZ.items():
        if isinstance(m, cls):
            return value
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_var is None:
            return None
        gamma = m.weight if m.weight is not None else torch.ones_like(m.running_var)
        return float((gamma / torch.sqrt(m.running_var + m.eps)).abs().max())
    if isinstance(m, nn.MaxPool2d):
        return 1.0 if p == "inf" else math.sqrt(_pool_overlap(m.kernel_size, m.stride))
    if isinstance(m, nn.AvgPool2d):
        if p == "inf" or m.count_include_pad or m.padding in (0, (0, 0)):
            return 1.0
        return None
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = m.output_size
        one = size in (1, (1, 1), [1, 1])
        return 1.0 if p == "inf" or one else None
    return None


def _function_lipschitz(node: torch.fx.Node, p: str) -> float | None:
    t = node.target
    if t in (F.relu, torch.relu, F.relu6, F.dropout, torch.flatten):
        return 1.0
    if t in _FUNCTION_LIPSCHITZ:
        return _FUNCTION_LIPSCHITZ[t]
    if t is F.leaky_relu:
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        return max(1.0, abs(float(slope)))
    if t is F.max_pool2d:
        if p == "inf":
            return 1.0
        kernel = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
        stride = node.kwargs.get("stride", node.args[2] if len(node.args) > 2 else None)
        return None if kernel is None else math.sqrt(_pool_overlap(kernel, stride))
    if t in (F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        if p == "inf":
            return 1.0
        if t is F.avg_pool2d:
            padding = node.kwargs.get("padding", node.args[3] if len(node.args) > 3 else 0)
            return 1.0 if padding in (0, (0, 0)) else None
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        return 1.0 if size in (1, (1, 1), [1, 1]) else None
    return None


def _pool_overlap(kernel: Any, stride: Any) -> int:
    ks = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    ss = ks if stride is None or stride == [] else ((stride, stride) if isinstance(stride, int) else tuple(stride))
    return math.prod(min(k, math.ceil(k / s)) for k, s in zip(ks, ss))
