"""Alignment of every consecutive pair of the folded model, for :func:`analyze`.

For each pair ``(a, b)`` found by :func:`robustprune.layers.consecutive_pairs`, the ops
between the two layers are copied out of the trace as a module ``z -> input of b`` (with the
activations replaced by the identity in identity mode, ``D = I``), the inputs of ``a`` are
recorded on the data batch, and :func:`robustprune.metrics.alignment` measures ``A_p``.

``A_p`` lies in (0, 1] when the ops between the pair are 1-Lipschitz (ReLU masks, folded
BatchNorm, average or non-overlapping max pooling, flattening). Otherwise it is at most the
ops' Lipschitz constant ``c`` (``sqrt(overlap)`` in l2 across an overlapping max-pool, the
largest ``|gamma| / sqrt(var + eps)`` across a BatchNorm that could not be folded), and
:func:`alignment_ceiling_notes` says so in the report for every such pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from robustprune._progress import bar
from robustprune.analysis._data import layer_inputs
from robustprune.analysis._network import op_lipschitz
from robustprune.analysis.report import fmt, p_label
from robustprune.errors import RobustPruneError
from robustprune.layers import Pair, path_between
from robustprune.layers.graph import is_activation, node_of
from robustprune.metrics import ALIGNMENT_TOL, alignment, operator_norm
from robustprune.metrics.alignment import conv_operator_norms

__all__ = [
    "CONV_ALIGNMENT_SAMPLES",
    "Alignments",
    "Reasons",
    "OperatorNorms",
    "PairContext",
    "pair_alignments",
    "pair_alignment",
    "pair_lipschitz",
    "alignment_ceiling_notes",
    "through_module",
]

#: default number of samples whose masks enter data-mode alignment of conv pairs
CONV_ALIGNMENT_SAMPLES = 32

#: ``{(a, b): {p: A_p or None}}`` and the reasons for the ``None`` values
Alignments = dict[tuple[str, str], dict[str, float | None]]
Reasons = dict[tuple[str, str], dict[str, str]]


class OperatorNorms:
    """l2 operator norms of the folded model's layers at their input sizes, computed once.

    They are the denominators of conv alignments. Norms already measured for the report
    (``conv_norm="operator"``, to ``POWER_TOL``) are reused; the others are computed to
    ``ALIGNMENT_TOL``, the tolerance of the alignment's numerator, as
    :func:`robustprune.metrics.alignment` does (a tighter denominator would not make the
    ratio more accurate, and costs about half again as many power-iteration steps)."""

    def __init__(self, model: nn.Module, shapes: dict[str, tuple[int, ...]], known: dict[str, float | None]) -> None:
        self.model, self.shapes = model, shapes
        self.values = {k: v for k, v in known.items() if v is not None}

    def get(self, name: str) -> float:
        if name not in self.values:
            layer = self.model.get_submodule(name)
            if isinstance(layer, nn.Conv2d):
                self.values[name] = operator_norm(
                    layer, "2", self.shapes.get(name), mode="operator", tol=ALIGNMENT_TOL
                )
            else:
                self.values[name] = operator_norm(layer, "2")
        return self.values[name]

    def prefetch(self, names: list[str]) -> None:
        """Compute the norms of the conv layers ``names`` not known yet, the convs of one
        weight shape, geometry and input size together (:func:`conv_operator_norms`)."""
        batches: dict[tuple, list[tuple[str, nn.Conv2d]]] = {}
        for name in dict.fromkeys(names):
            layer = self.model.get_submodule(name)
            if name in self.values or not isinstance(layer, nn.Conv2d) or self.shapes.get(name) is None:
                continue
            key = (tuple(layer.weight.shape), layer.stride, layer.padding, layer.dilation, layer.groups,
                   layer.padding_mode, layer.weight.dtype, tuple(self.shapes[name]))
            batches.setdefault(key, []).append((name, layer))
        for members in batches.values():
            if len(members) < 2:
                continue
            shape = self.shapes[members[0][0]]
            values = conv_operator_norms([m for _, m in members], shape, tol=ALIGNMENT_TOL)
            self.values.update({n: v for (n, _), v in zip(members, values)})


@dataclass
class PairContext:
    """What every pair's alignment needs: the folded model and its trace, the mask mode
    (``"data"`` or ``"identity"``), the batch ``x`` of model inputs, the norms, the operator
    norms of the denominators, the sample count (``None``: the default per pair kind) and a
    cache of one layer's recorded inputs."""

    folded: nn.Module
    graph: torch.fx.Graph
    mode: str
    x: torch.Tensor
    norms: tuple[str, ...]
    op_norms: OperatorNorms
    samples: int | None = None
    cache: dict[str, torch.Tensor] = field(default_factory=dict)


def pair_alignments(ctx: PairContext, pairs: list[Pair], *, progress: bool = False) -> tuple[Alignments, Reasons]:
    """:func:`pair_alignment` of every pair (the input cache is cleared afterwards)."""
    alignments: Alignments = {}
    reasons: Reasons = {}
    if "2" in ctx.norms:
        try:
            ctx.op_norms.prefetch([name for pair in pairs for name in (pair.a, pair.b)])
        except RobustPruneError:
            pass  # each pair then meets (and reports) its own failure
    for pair in bar(pairs, desc="analyze: alignment", enabled=progress):
        alignments[(pair.a, pair.b)], reasons[(pair.a, pair.b)] = pair_alignment(ctx, pair.a, pair.b)
    ctx.cache.clear()
    return alignments, reasons


def pair_alignment(ctx: PairContext, a: str, b: str) -> tuple[dict[str, float | None], dict[str, str]]:
    """``{p: A_p}`` of layers ``a`` -> ``b`` for every norm (``None`` where it cannot be
    computed) and ``{p: reason}`` for those."""
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    layer_a, layer_b = ctx.folded.get_submodule(a), ctx.folded.get_submodule(b)
    has_conv = isinstance(layer_a, nn.Conv2d) or isinstance(layer_b, nn.Conv2d)
    max_samples = int(ctx.samples) if ctx.samples is not None else (CONV_ALIGNMENT_SAMPLES if has_conv else 256)
    try:
        through = through_module(ctx.folded, ctx.graph, a, b, keep_activations=(ctx.mode == "data"))
        key = f"{a}@{max_samples}"
        if key not in ctx.cache:
            ctx.cache.clear()  # keep one layer's inputs in memory at a time
            ctx.cache[key] = layer_inputs(ctx.folded, layer_a, ctx.x[:max_samples])
        inputs = ctx.cache[key]
    except RobustPruneError as exc:
        return {p: None for p in ctx.norms}, {p: str(exc) for p in ctx.norms}
    for p in ctx.norms:
        try:
            pre = None
            if p == "2" and has_conv:
                pre = (ctx.op_norms.get(a), ctx.op_norms.get(b))
            values[p] = alignment(
                layer_a, layer_b, p, ctx.mode, inputs, through=through, max_samples=max_samples, norms=pre
            )
        except RobustPruneError as exc:
            values[p] = None
            reasons[p] = str(exc)
    return values, reasons


def through_module(
    root: nn.Module, graph: torch.fx.Graph, a: str, b: str, keep_activations: bool
) -> torch.fx.GraphModule:
    """The ops between layers ``a`` and ``b`` as a module ``z -> input of b`` (a copy of the
    traced nodes); with ``keep_activations=False`` the activations are replaced by the
    identity (``D = I``)."""
    modules = dict(root.named_modules())
    path = path_between(graph, modules, a, b)
    new = torch.fx.Graph()
    z = new.placeholder("z")
    env: dict[torch.fx.Node, torch.fx.Node] = {node_of(graph, a): z}
    last = z
    for node in path:
        (src,) = node.all_input_nodes
        if not keep_activations and is_activation(node, modules):
            env[node] = env[src]
        else:
            env[node] = new.node_copy(node, lambda n: env[n])
            if env[node].op == "call_method" and env[node].target == "relu_":
                env[node].target = "relu"
            if "inplace" in env[node].kwargs:
                env[node].kwargs = {**env[node].kwargs, "inplace": False}
        last = env[node]
    new.output(last)
    return torch.fx.GraphModule(root, new)


def pair_lipschitz(ctx: PairContext, a: str, b: str, p: str) -> float | None:
    """The Lipschitz constant (w.r.t. ``p``) of the ops between layers ``a`` and ``b`` as the
    alignment sees them (activations dropped in identity mode), ``None`` when unknown: the
    ceiling of ``A_p(a, b)``."""
    modules = dict(ctx.folded.named_modules())
    c = 1.0
    for node in path_between(ctx.graph, modules, a, b):
        if ctx.mode != "data" and is_activation(node, modules):
            continue
        value = op_lipschitz(node, modules, p)
        if value is None:
            return None
        c *= value
    return c


def alignment_ceiling_notes(ctx: PairContext, alignments: Alignments) -> list[str]:
    """One note listing the pairs whose alignment may exceed 1 because the ops between them
    are not 1-Lipschitz (``A_p <= c``, ``c`` their Lipschitz constant), if any."""
    found = []
    for (a, b), values in alignments.items():
        for p, value in values.items():
            if value is None:
                continue
            try:
                c = pair_lipschitz(ctx, a, b, p)
            except RobustPruneError:
                c = None
            if c is None or c > 1 + 1e-9:
                ceiling = "unknown" if c is None else fmt(c)
                found.append(f"{a}->{b} l{p_label(p)} A={fmt(value)} <= c={ceiling}")
    if not found:
        return []
    return [
        "alignment may exceed 1 where the ops between two layers are not 1-Lipschitz (an "
        "overlapping max-pool: c = sqrt(overlap) in l2; a BatchNorm not folded: "
        "c = max |gamma|/sqrt(var+eps)); A_p <= c: " + "; ".join(found)
    ]
