"""Robustness sensitivity of every dependency group, and the allocation it implies.

**Measurement** (:func:`measure_sensitivity`). On the first ``n_examples`` of a held-out
``data``, adversarial examples ``x_adv`` are crafted once against the *unpruned* model (eval
mode, :mod:`robustprune.pruners.adversarial`). Then for every group ``g`` (``n`` units) and
every width ``w`` the group keeps ``k = max(min_keep, ceil(w n))`` units, its ``k`` most
important ones (``group.order``), all other groups intact, and

    Δ(g, k) = CE(f_{g→k}(x_adv), y) - CE(f(x_adv), y)       (mean over the examples)

is the adversarial-loss increase of that cut. ``f_{g→k}`` is a real structurally pruned copy
of the model (torch-pruning's surgery on a clone aliasing the model's weights, exactly what
``apply`` would do to that group alone), so the measurement is exact for every architecture
the pruners support (residual adds, LayerNorm, attention heads): no masking approximation.
The same copy gives the exact MACs of the cut (torch-pruning's counter). The cost is one
forward of ``n_examples`` per (group, width); the part of the network before the first cut
layer is not recomputed (:mod:`robustprune.pruners.prefix`, checked against a full forward
per group). Under torch.distributed every rank measures its own ``n_examples`` and the loss
sums are all-reduced, so all ranks get the same Δ and the same decision.

**Allocation** (:func:`removal_order`). Per group, Δ as a function of the removed units
``r = n - k`` is interpolated linearly between the measured points (Δ = 0 at ``r = 0``) and
replaced by its lower convex hull, so the marginal loss of one more removed unit never
decreases as the group shrinks; the MACs removed are interpolated between their exact counts.
Each removable unit costs ``marginal loss / marginal MACs removed`` (a running maximum keeps
it non-decreasing within the group); units are removed cheapest first over all groups — the
greedy solution of "least total Δ for the MACs removed" when the Δ of different groups add
up (first order) and MACs are linear in each group's width. A group is never cut below its
smallest measured width. With a MACs target, :func:`fill_to_target` skips a unit whose removal
would jump past the target (a narrow group's channel can carry several percent of the MACs)
and fills the rest with the next-cheapest units, so the target is met as closely as units
allow.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustprune import distributed
from robustprune._inputs import Inputs
from robustprune._progress import bar as progress_bar
from robustprune.attacks import AdversarialConfig
from robustprune.errors import InvalidArgumentError
from robustprune.pruners import _tp
from robustprune.pruners.adversarial import (
    craft,
    device_of,
    eval_clone,
    process_group,
    read_batches,
)
from robustprune.pruners.attention import sync_attention
from robustprune.pruners.counting import counted_forward, structural_clone
from robustprune.pruners.groups import Group
from robustprune.pruners.plan import GroupPlan
from robustprune.pruners.prefix import (
    CallKey,
    record_calls,
    reusable_calls,
    run_capturing,
    run_replaying,
)
from robustprune.pruners.surgery import prune_group, sync_lowrank

__all__ = [
    "GroupSensitivity",
    "Sensitivity",
    "check_widths",
    "measure_sensitivity",
    "unit_costs",
    "removal_order",
    "fill_to_target",
    "counted_macs",
]

logger = logging.getLogger(__name__)

#: examples per forward of the measurement
BATCH = 64
_CHECK = 2  # examples of the per-group check that reusing the prefix is exact


@dataclass(frozen=True)
class GroupSensitivity:
    """The measured cuts of one group (``total`` units): ``kept`` counts (decreasing, each
    below ``total``), the loss increase ``loss`` and the MACs removed ``macs`` at each."""

    name: str
    total: int
    kept: tuple[int, ...]
    loss: tuple[float, ...]
    macs: tuple[int, ...]


@dataclass(frozen=True)
class Sensitivity:
    """The measurement: per group, the dense adversarial loss, and its cost."""

    groups: tuple[GroupSensitivity, ...]
    base_loss: float
    examples: int
    evaluations: int
    seconds: float


def check_widths(widths: Any) -> tuple[float, ...]:
    """Widths as a decreasing tuple of distinct fractions in (0, 1)."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
        raise InvalidArgumentError(
            f"widths must be a non-empty sequence of kept fractions in (0, 1), e.g. (0.75, 0.5, 0.25, "
            f"0.1); got {widths!r}.", argument="widths",
        )
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0 < float(w) < 1:
            raise InvalidArgumentError(
                f"widths must be fractions of each group's units to keep, in (0, 1); got {w!r} in {widths!r}.",
                argument="widths",
            )
    return tuple(sorted({float(w) for w in widths}, reverse=True))


def measure_sensitivity(
    model: nn.Module,
    inputs: Inputs,
    groups: Sequence[Group],
    *,
    data: Any,
    adversarial: AdversarialConfig,
    widths: Sequence[float],
    n_examples: int,
    min_keep: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> Sensitivity:
    """Δ(g, k) and the exact MACs removed for every group and width (module docstring);
    ``inputs`` are the example inputs MACs are counted on. The model is never changed."""
    start = time.perf_counter()
    device = device_of(model)
    base, _ = eval_clone(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    chunks = [(craft(base, x, y, adversarial, generator), y)
              for x, y in read_batches(data, device=device, n_examples=n_examples, batch_size=BATCH)]
    if not chunks:
        raise InvalidArgumentError("data yielded no examples; pass a held-out split with some.", argument="data")
    counts = [_kept_counts(g, widths, min_keep) for g in groups]
    prefix = _Prefix.of(base, chunks, groups)
    dense_macs = counted_macs(base, inputs)
    sums: list[float] = []
    macs: list[int] = []
    with progress_bar(total=sum(map(len, counts)), desc="sensitivity", unit="cut", enabled=progress, leave=False) as bar:
        for gi, (g, kept_counts) in enumerate(zip(groups, counts)):
            reused = prefix.outputs(gi)
            for i, clone in enumerate(_cuts(model, inputs, g, kept_counts)):
                if i == 0 and reused[0] and not _replay_is_exact(clone, prefix.x_check, prefix.check_outputs(gi)):
                    logger.debug("sensitivity: recomputing the whole forward for group %s", g.name)
                    reused = [{} for _ in chunks]
                sums.append(sum(_loss_sum(run_replaying(clone, x, r), y) for (x, y), r in zip(chunks, reused)))
                macs.append(dense_macs - counted_macs(clone, inputs))
                bar.update(1)
    n = float(sum(int(y.numel()) for _, y in chunks))
    base_sum, *cut_sums, n = _sum_over_ranks([prefix.base_sum, *sums, n], device)
    deltas = iter([c / n - base_sum / n for c in cut_sums])
    macs_left = iter(macs)
    per_group = tuple(
        GroupSensitivity(g.name, g.total, tuple(k), tuple(next(deltas) for _ in k), tuple(next(macs_left) for _ in k))
        for g, k in zip(groups, counts)
    )
    result = Sensitivity(per_group, base_sum / n, int(n), len(sums) + 1, time.perf_counter() - start)
    logger.info("sensitivity: %d loss evaluations on %d examples in %.1f s", result.evaluations, result.examples,
                result.seconds)
    return result


def unit_costs(s: GroupSensitivity) -> list[float]:
    """The cost of each removable unit of a group, in removal order (non-decreasing):
    marginal loss of the convexified Δ curve over the marginal MACs removed."""
    if not s.kept:
        return []
    removed = [0] + [s.total - k for k in s.kept]
    hull = _lower_hull(list(zip(removed, [0.0, *s.loss])))
    r = np.arange(removed[-1] + 1, dtype=np.float64)
    loss = np.interp(r, [p[0] for p in hull], [p[1] for p in hull])
    macs = np.interp(r, removed, [0.0, *map(float, s.macs)])
    out, running = [], -math.inf
    for d_loss, d_macs in zip(np.diff(loss), np.diff(macs)):
        cost = float(d_loss / d_macs) if d_macs > 0 else math.inf
        running = max(running, cost)
        out.append(running)
    return out


def removal_order(sensitivities: Sequence[GroupSensitivity]) -> list[int]:
    """The group index of every removable unit, cheapest first (ties: the lower group
    index, then the group's own order), so the first ``m`` entries remove a prefix of each
    group's units."""
    entries = [(c, gi) for gi, s in enumerate(sensitivities) for c in unit_costs(s)]
    return [gi for _, gi in sorted(entries, key=lambda e: e[0])]


def fill_to_target(
    order: Sequence[int],
    totals: Sequence[int],
    kept_fraction: Callable[[list[int]], float],
    *,
    target: float,
    tolerance: float,
) -> list[int]:
    """``order`` (as :func:`removal_order`) rearranged so that one of its prefixes keeps
    ``target`` of the MACs to within ``tolerance / 4`` where skipping units allows: where
    the next unit in line would jump past the target (one channel of a narrow group feeding
    many layers), that group stops there and the next-cheapest units of other groups fill
    the rest — the knapsack greedy's skip. ``kept_fraction(counts)`` is the exact kept
    fraction of per-group counts; each group's units stay in their own order."""
    chain = list(order)
    cache: dict[int, float] = {}

    def f(j: int) -> float:
        if j not in cache:
            removed = Counter(chain[:j])
            cache[j] = kept_fraction([n - removed[i] for i, n in enumerate(totals)])
        return cache[j]

    start, skipped = 0, set()
    while f(start) > target >= f(len(chain)):
        lo, hi = start, len(chain)  # f(lo) > target >= f(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
        if min(f(lo) - target, target - f(hi)) <= tolerance * target / 4 or chain[lo] in skipped:
            break
        g = chain[lo]
        skipped.add(g)
        chain = chain[:lo] + [u for u in chain[lo:] if u != g] + [u for u in chain[lo:] if u == g]
        cache = {j: v for j, v in cache.items() if j <= lo}
        start = lo
    return chain


def counted_macs(module: nn.Module, inputs: Inputs) -> int:
    """MACs per example of a (real) model copy, by torch-pruning's counter."""
    with torch.no_grad():
        _, macs, _ = counted_forward(module, inputs)
    return macs


# --------------------------------------------------------------------------- helpers


def _kept_counts(g: Group, widths: Sequence[float], min_keep: int) -> list[int]:
    """The distinct counts below ``g.total`` the widths ask for, decreasing."""
    n = g.total
    counts = {min(n, max(min_keep, 1, math.ceil(w * n - 1e-9))) for w in widths}
    return sorted((k for k in counts if k < n), reverse=True)


def _cuts(model: nn.Module, inputs: Inputs, g: Group, kept_counts: Sequence[int]):
    """A real copy of ``model`` (aliasing its weights) with group ``g`` cut to each count
    in turn (the same copy, pruned further each time), as ``apply`` would cut it."""
    if not kept_counts:
        return
    clone, _ = structural_clone(model, meta=False)
    clone.eval()
    graph = _tp.build_graph(clone, inputs)
    current = list(range(g.total))  # the original units the copy still has, in index order
    for k in kept_counts:
        keep = sorted(int(i) for i in g.order[:k].tolist())
        position = {u: i for i, u in enumerate(current)}
        plan = GroupPlan(g.name, g.layers, len(current), tuple(position[u] for u in keep), 0.0, 0.0,
                         root_out=g.root_out, channel_groups=g.channel_groups)
        prune_group(clone, graph, plan)
        sync_attention(clone, rescale=True)
        sync_lowrank(clone)
        current = keep
        yield clone.eval()


@dataclass
class _Prefix:
    """What the cut copies reuse of the uncut forward: per group the outermost calls that
    end before its first layer runs (:mod:`robustprune.pruners.prefix`), their outputs on
    every chunk and on the check batch, and the uncut loss sum."""

    reuse: list[tuple[CallKey, ...]]
    kept: list[dict[CallKey, Any]]
    x_check: torch.Tensor
    check_kept: dict[CallKey, Any]
    base_sum: float

    @classmethod
    def of(cls, base: nn.Module, chunks: Sequence[tuple[torch.Tensor, torch.Tensor]], groups: Sequence[Group]) -> _Prefix:
        x_check = chunks[0][0][:_CHECK]
        calls = record_calls(base, x_check)
        reuse = [reusable_calls(calls, g.layers) for g in groups]
        keys = sorted({k for r in reuse for k in r})
        base_sum, kept = 0.0, []
        for x, y in chunks:
            out, outputs = run_capturing(base, x, keys)
            base_sum += _loss_sum(out, y)
            kept.append(outputs)
        return cls(reuse, kept, x_check, run_capturing(base, x_check, keys)[1], base_sum)

    def outputs(self, gi: int) -> list[dict[CallKey, Any]]:
        """Group ``gi``'s reused outputs, one dict per chunk."""
        wanted = set(self.reuse[gi])
        return [{k: v for k, v in kept.items() if k in wanted} for kept in self.kept]

    def check_outputs(self, gi: int) -> dict[CallKey, Any]:
        wanted = set(self.reuse[gi])
        return {k: v for k, v in self.check_kept.items() if k in wanted}


def _replay_is_exact(clone: nn.Module, x: torch.Tensor, kept: dict[CallKey, Any]) -> bool:
    """Whether reusing the uncut prefix gives the cut copy's own output on ``x``."""
    with torch.no_grad():
        full = clone(x)
    replayed = run_replaying(clone, x, kept)
    return isinstance(full, torch.Tensor) and isinstance(replayed, torch.Tensor) and torch.allclose(
        full, replayed, rtol=1e-4, atol=1e-5
    )


def _loss_sum(logits: Any, y: torch.Tensor) -> float:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise InvalidArgumentError(
            "method='sensitivity' needs a classifier whose forward returns logits (N, classes); "
            f"this model returns {type(logits).__name__}.", argument="model",
        )
    return float(F.cross_entropy(logits.float(), y, reduction="sum"))


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every rank of the process group (as they are without one)."""
    ctx = process_group()
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    return distributed.sum_over_ranks(t, ctx, device).tolist()


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of points sorted by x (Andrew's monotone chain)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
