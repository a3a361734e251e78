"""Dependency groups: the units a channel rule decides on, scored by the importance.

A :class:`Group` is one set of coupled channels (a layer's outputs with everything that
must shrink with them: BatchNorm, residual adds, concatenations, depthwise convolutions,
attention heads), found by torch-pruning's DependencyGraph and enumerated as its pruners do
(attention groups re-rooted at the output projection, whose inputs carry the head
dimensions; channel groups averaged per unit). Rules (:mod:`robustprune.pruners.rules`)
receive groups as frozen values and return how many units each keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustprune.pruners import _tp
from robustprune.pruners.attention import attention_modules, check_attention_supported, qkv_producer
from robustprune.pruners.importance import group_theta, power_of

__all__ = ["Group", "ROOT_TYPES", "collect_groups"]

#: module types whose output channels root a dependency group
ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True, eq=False)
class Group:
    """One prunable dependency group, as a rule sees it.

    ``name``: the root layer (for attention, the output projection whose *inputs* carry the
    head dimensions); ``layers``: the Linear/Conv layers whose outputs shrink with it (not
    ignored ones); ``theta``: the importance of every unit, float64, in the original channel
    order (length ``total``); ``order``: unit indices by decreasing ``theta`` (stable sort,
    ties to the lower index), so keeping ``k`` units keeps ``order[:k]``;
    ``channel_groups``: how many channel groups (heads, conv groups) prune the same unit
    (the root layer's width is ``total * channel_groups``); ``root_out``: whether the root's
    outputs (True) or inputs (attention) are pruned.
    """

    name: str
    layers: tuple[str, ...]
    theta: torch.Tensor
    order: torch.Tensor
    channel_groups: int = 1
    root_out: bool = True

    @property
    def total(self) -> int:
        """The number of prunable units ``n``."""
        return int(self.theta.numel())


def collect_groups(
    clone: nn.Module, graph: Any, ignored: Sequence[str], importance: Callable[[Any], Any]
) -> list[Group]:
    """Every prunable group of the traced ``clone`` (its DependencyGraph ``graph``), scored
    by ``importance``, except those rooted at or pruning the outputs of ``ignored`` modules."""
    names = _tp.module_names(graph)
    attention = dict(attention_modules(clone))
    num_heads = {qkv_producer(m): int(m.num_heads) for m in attention.values()}
    ignored_modules = [sub for name in ignored for sub in clone.get_submodule(name).modules()]
    ignored_set = set(map(id, ignored_modules))
    out_groups, in_groups = _tp.channel_groups(clone, graph, num_heads)
    power = power_of(importance)
    groups: list[Group] = []
    for group in _tp.prunable_groups(graph, ignored_modules, ROOT_TYPES):
        qkv = [m for m, out in _tp.members(graph, group) if out and m in num_heads]
        if qkv:
            check_attention_supported(attention, qkv)
            group = _tp.reroot_at_input(graph, group, ROOT_TYPES)
            if group is None:
                continue
        members = _tp.members(graph, group)
        ch = max([1, *((out_groups if out else in_groups).get(m, 1) for m, out in members)])
        with torch.no_grad():
            scores = importance(group)
        if scores is None:
            continue
        root, root_out = members[0]
        theta = group_theta(scores, ch, power, names.get(root))
        if theta is None:
            continue
        layers = tuple(
            dict.fromkeys(
                names[m] for m, out in members if out and isinstance(m, ROOT_TYPES) and id(m) not in ignored_set
            )
        )
        groups.append(
            Group(
                name=names[root],
                layers=layers or (names[root],),
                theta=theta,
                order=torch.sort(theta, descending=True, stable=True).indices,
                channel_groups=ch,
                root_out=root_out,
            )
        )
    return groups
