"""Which modules are prunable, how a weight is matricized, and how layers connect.

Matricization (DESIGN.md): rows are output units. A Linear weight ``W`` is ``h x d``; a
Conv2d weight ``(out, in/groups, kh, kw)`` becomes ``out x (in/groups*kh*kw)``; a
:class:`LowRankLinear` contributes its effective product ``B @ A``.

Connectivity is read from a :mod:`torch.fx` trace of the model: layer ``b`` *follows*
layer ``a`` when ``b`` consumes ``a``'s output through only BatchNorm, ReLU-like
activations, pooling, dropout or flattening. A model is a *sequential chain* when its
graph is a single path of such nodes (MLP, VGG); residual adds, concatenations and
attention break the chain, and :func:`sequential_chain` says where.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from robustprune.errors import InvalidArgumentError, ModelNotSupportedError

__all__ = [
    "Normalize",
    "LowRankLinear",
    "MeanPad",
    "PRUNABLE_TYPES",
    "is_prunable",
    "prunable_layers",
    "matricize",
    "classifier_head",
    "first_layer",
    "Pair",
    "Chain",
    "consecutive_pairs",
    "sequential_chain",
    "fold_batchnorm",
    "fold_for_analysis",
    "get_submodule_parent",
]


class Normalize(nn.Module):
    """Input normalization ``(x - mean) / std`` living inside the model (inputs stay in [0, 1])."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.ndim != 1:
            raise InvalidArgumentError(
                f"Normalize needs mean and std of the same length (one per channel), "
                f"got {len(mean_t)} and {len(std_t)}."
            )
        if torch.any(std_t <= 0):
            raise InvalidArgumentError(f"Normalize needs a positive std, got {std_t.tolist()}.")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return (x - self.mean) / self.std
        # flat inputs: broadcast channel statistics over the trailing dims
        return (x - self.mean.flatten()[0]) / self.std.flatten()[0]

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class LowRankLinear(nn.Module):
    """A Linear layer parameterised as ``W = B @ A`` with rank ``r`` (``A: r x d``, ``B: h x r``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
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

    Used when folding input normalization into a padded first convolution: zero padding of
    the normalized input equals mean padding of the raw input, so the fold stays exact.
    """

    def __init__(self, mean: torch.Tensor, padding: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().view(1, -1, 1, 1))
        self.padding = tuple(int(p) for p in padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        return F.pad(x - self.mean, (pw, pw, ph, ph)) + self.mean


PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, LowRankLinear)

_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU)
_POOL = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_PASS_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.Identity,
    *_RELU_LIKE,
    *_POOL,
)
_PASS_FUNCTIONS = {
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
}
_PASS_METHODS = {"relu", "flatten", "view", "reshape", "relu_"}


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
    weight = layer if isinstance(layer, torch.Tensor) else getattr(layer, "weight", None)
    if weight is None:
        raise ModelNotSupportedError(
            f"{type(layer).__name__} has no weight to matricize; pass a Linear, Conv2d or "
            "LowRankLinear layer."
        )
    if weight.ndim < 2:
        raise InvalidArgumentError(
            f"Cannot matricize a weight of shape {tuple(weight.shape)}: need at least 2 dims."
        )
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


# --------------------------------------------------------------------------- tracing


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


class _Tracer(torch.fx.Tracer):
    """Keeps prunable layers (LowRankLinear included) and Normalize as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (LowRankLinear, Normalize, MeanPad)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> torch.fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for dynamic control flow
        raise ModelNotSupportedError(
            f"Cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Connectivity-based metrics "
            "(alignment, chain bounds, folding) need a traceable model; per-layer metrics "
            "still work."
        ) from exc


def _node_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
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
        if isinstance(module, (Normalize, MeanPad)):
            return "normalize"
        if isinstance(module, _PASS_MODULES):
            return "pass"
        return "other"
    if node.op == "call_function":
        return "pass" if node.target in _PASS_FUNCTIONS else "other"
    if node.op == "call_method":
        return "pass" if node.target in _PASS_METHODS else "other"
    return "other"


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in node.all_input_nodes]


def _describe(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return f"{node.op}:{node.target}"


def consecutive_pairs(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[Pair]:
    """Every ``(a, b)`` where layer ``b`` consumes layer ``a``'s output through only
    BatchNorm, ReLU-like activations, pooling, dropout or flattening (e.g. conv1 -> conv2
    inside a ResNet BasicBlock). Found by a torch.fx trace; ``example_inputs`` is accepted
    for API symmetry (fx traces symbolically) and checked by a forward pass when given."""
    if example_inputs is not None:
        _check_forward(model, example_inputs)
    graph = _trace(model)
    modules = dict(model.named_modules())
    pairs: list[Pair] = []
    for node in graph.nodes:
        if _node_kind(node, modules) != "layer":
            continue
        # walk forward through pass-through nodes
        frontier: list[tuple[torch.fx.Node, tuple[str, ...]]] = [(node, ())]
        while frontier:
            current, through = frontier.pop()
            for user in current.users:
                kind = _node_kind(user, modules)
                if kind == "layer":
                    pairs.append(Pair(str(node.target), str(user.target), through))
                elif kind == "pass" and len(_tensor_inputs(user)) == 1:
                    frontier.append((user, (*through, _describe(user))))
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
        graph = _trace(model)
    except ModelNotSupportedError as exc:
        return Chain(None, str(exc))
    modules = dict(model.named_modules())
    layers: list[str] = []
    through: list[tuple[str, ...]] = []
    pending: list[str] = []
    for node in graph.nodes:
        kind = _node_kind(node, modules)
        if kind in ("input", "output"):
            continue
        if kind == "other":
            return Chain(
                None,
                f"not a sequential chain: '{_describe(node)}' ({node.op}) is neither a "
                "Linear/Conv layer nor a pass-through op (residual adds, concatenation and "
                "attention make a model non-sequential)",
            )
        if len(node.users) > 1:
            return Chain(
                None,
                f"not a sequential chain: the output of '{_describe(node)}' is used "
                f"{len(node.users)} times (a residual or branching connection)",
            )
        if kind == "layer":
            if layers:
                through.append(tuple(pending))
            layers.append(str(node.target))
            pending = []
        elif kind == "pass":
            pending.append(_describe(node))
    if not layers:
        return Chain(None, "the model has no Linear or Conv2d layer")
    return Chain(tuple(layers), "", tuple(through))


def _check_forward(model: nn.Module, example_inputs: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                model(example_inputs)
            finally:
                model.train(was_training)
    except Exception as exc:
        raise InvalidArgumentError(
            f"The model does not accept example inputs of shape {tuple(example_inputs.shape)} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Pass "
            "example_inputs with the shape the model expects, e.g. torch.rand(1, 3, 32, 32)."
        ) from exc


# --------------------------------------------------------------------------- folding


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_var is None or bn.running_mean is None:
        raise ModelNotSupportedError(
            "Cannot fold a BatchNorm without running statistics (track_running_stats=False)."
        )
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    shift = beta - bn.running_mean * scale
    return scale, shift


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eval-mode BatchNorm that directly follows a Linear or
    Conv2d folded into that layer's weight and bias (the BN becomes Identity). Exact in
    eval mode: ``W' = W * g/sqrt(v+e)``, ``b' = (b - m) * g/sqrt(v+e) + beta``."""
    folded = copy.deepcopy(model).eval()
    graph = _trace(folded)
    modules = dict(folded.named_modules())
    with torch.no_grad():
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(
                modules[str(node.target)], (nn.BatchNorm1d, nn.BatchNorm2d)
            ):
                continue
            inputs = _tensor_inputs(node)
            src = inputs[0] if inputs else None
            if src is None or src.op != "call_module" or len(src.users) != 1:
                continue
            layer = modules[str(src.target)]
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                continue
            bn = modules[str(node.target)]
            scale, shift = _bn_scale(bn)
            shape = (-1,) + (1,) * (layer.weight.ndim - 1)
            layer.weight.mul_(scale.view(shape))
            bias = layer.bias if layer.bias is not None else torch.zeros_like(shift)
            new_bias = bias * scale + shift
            if layer.bias is None:
                layer.bias = nn.Parameter(new_bias)
            else:
                layer.bias.copy_(new_bias)
            parent, attr = get_submodule_parent(folded, str(node.target))
            setattr(parent, attr, nn.Identity())
    return folded


def fold_for_analysis(model: nn.Module) -> nn.Module:
    """A copy with eval-mode BatchNorm folded into the adjacent layers and the model's
    :class:`Normalize` folded into the first layer (``W' = W / std`` per input channel, the
    bias shifted by ``-W' mean``). Outputs are preserved exactly: a padded first
    convolution gets :class:`MeanPad` in place of the Normalize, since zero-padding the
    normalized input equals mean-padding the raw input. Norms and bounds are computed on
    this copy, so they describe the map from raw inputs in [0, 1] to logits."""
    folded = fold_batchnorm(model)
    graph = _trace(folded)
    modules = dict(folded.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], Normalize):
            continue
        norm = modules[str(node.target)]
        # find the single layer consuming the normalized input through flatten/reshape only
        current, flat = node, False
        while len(current.users) == 1:
            (user,) = current.users
            kind = _node_kind(user, modules)
            if kind == "layer":
                _fold_normalize_into(folded, norm, str(node.target), modules[str(user.target)], flat)
                break
            if kind == "pass" and _describe(user) in ("flatten", "view", "reshape") or (
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
            if layer.groups != 1:
                raise ModelNotSupportedError(
                    "Folding normalization into a grouped first convolution is not supported."
                )
            shift = (layer.weight / std.view(1, -1, 1, 1)) * mean.view(1, -1, 1, 1)
            layer.weight.div_(std.view(1, -1, 1, 1))
            delta = shift.sum(dim=(1, 2, 3))
            padding = layer.padding
            if isinstance(padding, str) or layer.padding_mode != "zeros":
                raise ModelNotSupportedError(
                    "Folding normalization needs a first conv with numeric zero padding."
                )
            replacement: nn.Module = (
                MeanPad(mean, padding) if any(int(p) > 0 for p in padding) else nn.Identity()
            )
            layer.padding = (0, 0)
        elif isinstance(layer, (nn.Linear, LowRankLinear)):
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
            delta = layer.weight @ mean_f
            replacement = nn.Identity()
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


def iter_named_prunable(model: nn.Module, names: Sequence[str]) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` for the given names, with a clear error for an unknown name."""
    for name in names:
        try:
            yield name, model.get_submodule(name)
        except AttributeError as exc:
            raise InvalidArgumentError(f"The model has no layer named '{name}'.") from exc

