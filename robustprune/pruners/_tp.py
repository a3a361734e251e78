"""All access to torch-pruning, in one place: ``import torch_pruning`` appears only here.

The other pruner modules decide *which* channels go; the functions below ask torch-pruning's
``DependencyGraph`` which channels are coupled and remove them. Several of them use
torch-pruning **1.6.1 internals** (the version pinned in ``setup.cfg``), which are not part of
its public API:

- ``DependencyGraph._module2name``, ``._param_to_name``, ``.module2node``,
  ``.unwrapped_parameters``, ``.ignored_params``: rewritten by :func:`swap_real_tensors`;
- ``DependencyGraph.get_pruner_of_module`` and the per-op pruners' ``get_in/out_channels``,
  ``get_in/out_channel_groups``, ``prune_in/out_channels``;
- ``get_pruning_group`` (sorted unique ``int`` indices relative to the layer's *current*
  width), ``check_pruning_group`` (False when a layer would be emptied),
  ``is_in/out_channel_pruning_fn``, ``get_all_groups``;
- the dependency group layout: ``for dep, idxs in group``, ``dep.target.module``,
  ``dep.handler``;
- ``pruning_history()`` / ``load_pruning_history(h)``: ``[module name, is_out, indices]``
  entries, stored in checkpoints (:mod:`robustprune.checkpoint`);
- ``utils.op_counter`` (``add_flops_counting_methods``, ``start/stop_flops_count``,
  ``compute_average_flops_cost``): the counter behind ``tp.utils.count_ops_and_params``;
- ``importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)``
  returns *squared* group norms; ``importance.GroupTaylorImportance`` reads ``.grad`` of the
  group's Conv/Linear (and LayerNorm) weights: in 1.6.1 it compares BatchNorm's handler with
  ``prune_groupnorm_out_channels`` and so never scores BatchNorm.

When upgrading torch-pruning, re-check every name above; that ``build_dependency`` still
traces autograd (gradients enabled, parameters requiring grad; it calls ``model.eval()``);
that :func:`macs_counter` still gives ``count_ops_and_params``' numbers
(``tests/test_pruners.py::test_count_macs_params_matches_torch_pruning_counter``); that the
default importance is still squared; and that pruning histories written by 1.6.1 still load
(``tests/test_checkpoint.py``). ``tp.__version__`` reads "1.6.0" inside 1.6.1: use
``importlib.metadata.version("torch-pruning")``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils import op_counter

__all__ = [
    "build_graph",
    "swap_real_tensors",
    "module_names",
    "prunable_groups",
    "members",
    "reroot_at_input",
    "channel_groups",
    "channel_width",
    "prune_channels",
    "pruning_history",
    "load_pruning_history",
    "macs_counter",
    "group_magnitude",
    "group_taylor",
    "group_parameters",
]


def build_graph(model: nn.Module, example_inputs: Any, forward_fn: Callable[[nn.Module, Any], Any] | None = None) -> Any:
    """torch-pruning's ``DependencyGraph`` of ``model`` (traced with gradients enabled)."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, forward_fn=forward_fn, verbose=False
        )


def swap_real_tensors(graph: Any, real: Mapping[int, torch.Tensor]) -> None:
    """Replace the proxy tensors ``graph`` was traced with (``{id(proxy): real tensor}``) by
    the real ones in the graph's parameter-keyed tables."""

    def swap(t: Any) -> Any:
        return real.get(id(t), t) if isinstance(t, torch.Tensor) else t

    for key in list(graph.module2node):
        if isinstance(key, torch.Tensor) and id(key) in real:
            node = graph.module2node.pop(key)
            node.module = real[id(key)]
            graph.module2node[node.module] = node
    graph._param_to_name = {swap(k): v for k, v in graph._param_to_name.items()}
    graph._module2name = {swap(k): v for k, v in graph._module2name.items()}
    graph.unwrapped_parameters = [type(u)(swap(u[0]), u[1]) for u in graph.unwrapped_parameters]
    graph.ignored_params = [swap(p) for p in graph.ignored_params]


def module_names(graph: Any) -> dict[Any, str]:
    """``{module: qualified name}`` of the traced model."""
    return graph._module2name


def prunable_groups(graph: Any, ignored: Sequence[nn.Module], root_types: tuple[type[nn.Module], ...]) -> Iterator[Any]:
    """Every dependency group rooted at a layer of ``root_types`` whose output channels can
    be pruned, none of whose pruned outputs is in ``ignored`` (as torch-pruning's pruners
    enumerate them)."""
    return graph.get_all_groups(ignored_layers=list(ignored), root_module_types=root_types)


def members(graph: Any, group: Any) -> list[tuple[Any, bool]]:
    """``(module, whether its output channels are pruned)`` for every dependency of
    ``group``, the root first."""
    return [(dep.target.module, bool(graph.is_out_channel_pruning_fn(dep.handler))) for dep, _ in group]


def reroot_at_input(graph: Any, group: Any, root_types: tuple[type[nn.Module], ...]) -> Any:
    """The same group rooted at the inputs of its last ``root_types`` layer whose input
    channels it prunes (torch-pruning's treatment of timm attention: index mapping through
    ``unbind`` is exact from there); None when there is none."""
    downstream, idxs = None, None
    for dep, dep_idxs in group:
        if isinstance(dep.target.module, root_types) and graph.is_in_channel_pruning_fn(dep.handler):
            downstream, idxs = dep, dep_idxs
    if downstream is None:
        return None
    return graph.get_pruning_group(downstream.target.module, downstream.handler, list(idxs))


def channel_groups(model: nn.Module, graph: Any, num_heads: Mapping[nn.Module, int]) -> tuple[dict, dict]:
    """``(out_groups, in_groups)``: ``{module: channel groups}`` as torch-pruning's
    BasePruner detects them (grouped convolutions; ``num_heads`` for attention)."""
    out_groups: dict[nn.Module, int] = dict(num_heads)
    in_groups: dict[nn.Module, int] = {}
    for m in model.modules():
        pruner = graph.get_pruner_of_module(m)
        if pruner is None:
            continue
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels:
            continue
        g_in, g_out = pruner.get_in_channel_groups(m), pruner.get_out_channel_groups(m)
        if g_in > 1:
            in_groups[m] = g_in
        if g_out > 1:
            out_groups[m] = g_out
    return out_groups, in_groups


def channel_width(graph: Any, module: nn.Module, out: bool) -> int:
    """The current number of output (``out``) or input channels of ``module``."""
    pruner = graph.get_pruner_of_module(module)
    return pruner.get_out_channels(module) if out else pruner.get_in_channels(module)


def prune_channels(graph: Any, module: nn.Module, out: bool, idxs: list[int]) -> bool:
    """Remove channels ``idxs`` (sorted unique ints) at ``module``'s outputs (``out``) or
    inputs with every coupled layer; False, pruning nothing, when a layer would be emptied."""
    pruner = graph.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if out else pruner.prune_in_channels
    group = graph.get_pruning_group(module, fn, idxs)
    if not graph.check_pruning_group(group):
        return False
    group.prune()
    return True


def pruning_history(graph: Any) -> list[tuple[str, bool, Iterable[int]]]:
    """The ``[module name, is_out, indices]`` entries of every pruning done through ``graph``."""
    return graph.pruning_history()


def load_pruning_history(graph: Any, entries: list[list[Any]]) -> None:
    """Redo recorded pruning entries on the model ``graph`` was built on."""
    graph.load_pruning_history(entries)


@contextlib.contextmanager
def macs_counter(model: nn.Module) -> Iterator[Callable[[], tuple[float, int]]]:
    """Count MACs of the forward passes run inside the block (``model`` in eval mode, with
    torch-pruning's counter hooks); yields a function returning ``(MACs per example, params)``."""
    counted = op_counter.add_flops_counting_methods(model)
    counted.eval()
    counted.start_flops_count(ost=sys.stdout, verbose=False, ignore_list=[])
    try:
        yield lambda: tuple(counted.compute_average_flops_cost()[:2])
    finally:
        counted.stop_flops_count()


def group_magnitude() -> Callable[[Any], torch.Tensor | None]:
    """torch-pruning's ``GroupMagnitudeImportance(p=2, normalizer=None)``: per channel, the
    *squared* ℓ2 norm of the group's parameters, averaged over the coupled layers."""
    return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)


def group_taylor() -> Callable[[Any], torch.Tensor | None]:
    """torch-pruning's ``GroupTaylorImportance(group_reduction="mean", normalizer=None,
    multivariable=True)``: per channel, ``|sum_j w_j * grad_j|`` over the channel's weights in
    each coupled Conv/Linear (output rows and consumer input columns; BatchNorm is skipped by
    1.6.1), averaged over those layers. Reads the weights' ``.grad``."""
    return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None, multivariable=True)


def group_parameters(group: Any) -> list[nn.Parameter]:
    """The parameters of every module of a dependency group (each once)."""
    out: dict[int, nn.Parameter] = {}
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.Module):
            for p in module.parameters(recurse=False):
                out.setdefault(id(p), p)
    return list(out.values())
