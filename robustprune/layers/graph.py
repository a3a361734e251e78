"""How layers connect: a :mod:`torch.fx` trace of the model, read as a graph of layers.

Layer ``b`` *follows* layer ``a`` when ``b`` consumes ``a``'s output through only
BatchNorm, ReLU-like activations, pooling, dropout or flattening (the pass-through tables of
:mod:`robustprune.layers.modules`). A model is a *sequential chain* when its graph is a
single path of such nodes (MLP, VGG); residual adds, concatenations and attention break the
chain, and :func:`sequential_chain` says where.

The trace keeps prunable layers (LowRankLinear included), :class:`Normalize`,
:class:`MeanPad` and :class:`Center` as leaves, so every node is a layer, a pass-through
op, a normalization, the input, the output or something else (:func:`node_kind`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx
from torch import nn

from robustprune._modes import eval_mode
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers.modules import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    RELU_LIKE,
    Center,
    LowRankLinear,
    MeanPad,
    Normalize,
    is_prunable,
)

__all__ = [
    "Pair",
    "Chain",
    "NodeKind",
    "LeafTracer",
    "trace",
    "node_kind",
    "describe",
    "is_activation",
    "node_of",
    "path_between",
    "consecutive_pairs",
    "sequential_chain",
]

NodeKind = Literal["layer", "pass", "normalize", "input", "output", "other"]


@dataclass(frozen=True)
class Pair:
    """Layer ``b`` consumes layer ``a``'s output through the pass-through ops ``through``."""

    a: str
    b: str
    through: tuple[str, ...]


@dataclass(frozen=True)
class Chain:
    """The sequential chain of a model: its prunable layers in order, or ``None`` with a reason.

    ``through[i]`` lists the pass-through ops between ``layers[i]`` and ``layers[i + 1]``.
    """

    layers: tuple[str, ...] | None
    reason: str = ""
    through: tuple[tuple[str, ...], ...] = ()

    @property
    def is_chain(self) -> bool:
        return self.layers is not None


class LeafTracer(torch.fx.Tracer):
    """Keeps prunable layers (LowRankLinear included) and the normalizations as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (LowRankLinear, Normalize, MeanPad, Center)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> torch.fx.Graph:
    """The model's :class:`torch.fx.Graph` (traced with :class:`LeafTracer`); an untraceable
    forward raises :class:`~robustprune.errors.ModelNotSupportedError`."""
    try:
        return LeafTracer().trace(model)
    except Exception as exc:  # fx raises many types for dynamic control flow
        raise ModelNotSupportedError(
            f"Cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Connectivity-based metrics "
            "(alignment, chain bounds, folding) need a traceable model; per-layer metrics "
            "still work."
        ) from exc


def node_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> NodeKind:
    """'layer', 'pass', 'normalize', 'input', 'output' or 'other'."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return "other"
    if node.op == "call_module":
        module = modules[str(node.target)]
        if is_prunable(module):
            return "layer"
        if isinstance(module, (Normalize, MeanPad, Center)):
            return "normalize"
        if isinstance(module, PASS_MODULES):
            return "pass"
        return "other"
    if node.op == "call_function":
        return "pass" if node.target in PASS_FUNCTIONS else "other"
    if node.op == "call_method":
        return "pass" if node.target in PASS_METHODS else "other"
    return "other"


def describe(node: torch.fx.Node) -> str:
    """A node's name as reports show it: the module path, the function's name, or ``op:target``."""
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return f"{node.op}:{node.target}"


def is_activation(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True for a ReLU-like activation (module, function or tensor method)."""
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], RELU_LIKE)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    if node.op == "call_method":
        return node.target in ACTIVATION_METHODS
    return False


def node_of(graph: torch.fx.Graph, target: str) -> torch.fx.Node:
    """The node that calls the module ``target``."""
    for node in graph.nodes:
        if node.op == "call_module" and str(node.target) == target:
            return node
    raise ModelNotSupportedError(f"Layer '{target}' is not called in the traced forward.")


def path_between(
    graph: torch.fx.Graph, modules: dict[str, nn.Module], a: str, b: str
) -> list[torch.fx.Node]:
    """The pass-through nodes from layer ``a``'s output to layer ``b``'s input."""
    start = node_of(graph, a)
    stack: list[tuple[torch.fx.Node, list[torch.fx.Node]]] = [(start, [])]
    while stack:
        node, path = stack.pop()
        for user in node.users:
            kind = node_kind(user, modules)
            if kind == "layer" and str(user.target) == b:
                return path
            if kind == "pass" and len(user.all_input_nodes) == 1:
                stack.append((user, [*path, user]))
    raise ModelNotSupportedError(f"Layer '{b}' does not consume layer '{a}''s output directly.")


def consecutive_pairs(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[Pair]:
    """Every ``(a, b)`` where layer ``b`` consumes layer ``a``'s output through only
    BatchNorm, ReLU-like activations, pooling, dropout or flattening (e.g. conv1 -> conv2
    inside a ResNet BasicBlock). Found by a torch.fx trace; ``example_inputs`` is accepted
    for API symmetry (fx traces symbolically) and checked by a forward pass when given."""
    if example_inputs is not None:
        _check_forward(model, example_inputs)
    graph = trace(model)
    modules = dict(model.named_modules())
    pairs: list[Pair] = []
    for node in graph.nodes:
        if node_kind(node, modules) != "layer":
            continue
        # walk forward through pass-through nodes
        frontier: list[tuple[torch.fx.Node, tuple[str, ...]]] = [(node, ())]
        while frontier:
            current, through = frontier.pop()
            for user in current.users:
                kind = node_kind(user, modules)
                if kind == "layer":
                    pairs.append(Pair(str(node.target), str(user.target), through))
                elif kind == "pass" and len(user.all_input_nodes) == 1:
                    frontier.append((user, (*through, describe(user))))
    seen: set[tuple[str, str]] = set()
    unique = []
    for p in pairs:
        if (p.a, p.b) not in seen:
            seen.add((p.a, p.b))
            unique.append(p)
    return unique


def sequential_chain(model: nn.Module) -> Chain:
    """The model's prunable layers as a chain ``x -> W1 -> act -> W2 -> ... -> WL``, or a
    :class:`Chain` with ``layers=None`` and the reason (residual add, concatenation,
    attention, untraceable forward)."""
    try:
        graph = trace(model)
    except ModelNotSupportedError as exc:
        return Chain(None, str(exc))
    modules = dict(model.named_modules())
    layers: list[str] = []
    through: list[tuple[str, ...]] = []
    pending: list[str] = []
    for node in graph.nodes:
        kind = node_kind(node, modules)
        if kind in ("input", "output"):
            continue
        if kind == "other":
            return Chain(
                None,
                f"not a sequential chain: '{describe(node)}' ({node.op}) is neither a "
                "Linear/Conv layer nor a pass-through op (residual adds, concatenation and "
                "attention make a model non-sequential)",
            )
        if len(node.users) > 1:
            return Chain(
                None,
                f"not a sequential chain: the output of '{describe(node)}' is used "
                f"{len(node.users)} times (a residual or branching connection)",
            )
        if kind == "layer":
            if layers:
                through.append(tuple(pending))
            layers.append(str(node.target))
            pending = []
        elif kind == "pass":
            pending.append(describe(node))
    if not layers:
        return Chain(None, "the model has no Linear or Conv2d layer")
    return Chain(tuple(layers), "", tuple(through))


def _check_forward(model: nn.Module, example_inputs: torch.Tensor) -> None:
    # robustprune._inputs imports this package (input_shape_of reads prunable_layers), so
    # this one forward check stays here rather than importing it back (no import cycle)
    try:
        with torch.no_grad(), eval_mode(model):
            model(example_inputs)
    except Exception as exc:
        raise InvalidArgumentError(
            f"The model does not accept example inputs of shape {tuple(example_inputs.shape)} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Pass "
            "example_inputs with the shape the model expects, e.g. torch.rand(1, 3, 32, 32)."
        ) from exc
