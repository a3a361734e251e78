"""The target-MACs search: the pruning strength that keeps a given fraction of the MACs.

Pruning strength (ε, a ratio) only matters at its breakpoints, where some group's kept
count changes, and the kept MACs fraction never increases with strength. So the search runs
over the candidate strengths in increasing order, alternating interpolation and bisection
steps on their index, and returns the candidate whose fraction is closest to the target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from robustprune._progress import bar as progress_bar
from robustprune.errors import PruningError

__all__ = ["solve_target_macs"]

logger = logging.getLogger(__name__)


def solve_target_macs(
    candidates: Sequence[float],
    kept_fraction: Callable[[float], float],
    *,
    target: float,
    tolerance: float,
    pruner: str,
    method: str,
    progress: bool = False,
) -> tuple[float, float]:
    """``(strength, kept fraction)`` of the candidate whose kept-MACs fraction is closest to
    ``target`` (ties: the weaker one).

    ``candidates`` are ordered by increasing pruning strength, so ``kept_fraction`` is
    non-increasing along them. Stops once within a quarter of ``tolerance`` (relative);
    raises :class:`PruningError` when even the strongest candidate keeps more than
    ``target * (1 + tolerance)``, and warns when the closest one misses by more than
    ``tolerance``. ``pruner`` (a class name) and ``method`` label messages and the progress
    bar."""
    cache: dict[int, float] = {}
    bar = progress_bar(desc=f"{method}: solving target_macs={target:g}", unit="eval", enabled=progress, leave=False)

    def f(i: int) -> float:
        if i not in cache:
            cache[i] = kept_fraction(candidates[i])
            bar.update(1)
            bar.set_postfix(kept=f"{cache[i]:.4f}")
        return cache[i]

    try:
        hi = len(candidates) - 1
        if f(hi) > target * (1 + tolerance):
            raise PruningError(
                f"target_macs={target:g} is unreachable with {pruner}: even the "
                f"strongest setting keeps {f(hi):.4f} of the MACs (ignored layers, the "
                "classifier head and min_keep bound it). Ask for a larger target_macs or "
                "ignore fewer layers."
            )
        _narrow(f, 0, hi, target, tolerance)
        best = min(cache, key=lambda i: (abs(cache[i] - target), i))
    finally:
        bar.close()
    if abs(cache[best] - target) > tolerance * target:
        logger.warning(
            "%s: the closest achievable MACs fraction is %.4f for target_macs=%.4f (the "
            "groups are too coarse to hit it within %.1f%%).",
            pruner, cache[best], target, 100 * tolerance,
        )
    logger.info("%s: target_macs=%.4f -> parameter %.6g keeps %.4f of the MACs (%d evaluations)",
                pruner, target, candidates[best], cache[best], len(cache))
    return float(candidates[best]), cache[best]


def _narrow(f: Callable[[int], float], lo: int, hi: int, target: float, tolerance: float) -> None:
    """Evaluate ``f`` (non-increasing in the index) between ``lo`` and ``hi`` until the
    bracket around ``target`` closes or a value lands within ``tolerance / 4`` of it."""
    if f(lo) <= target:
        return
    step = 0
    while hi - lo > 1:
        f_lo, f_hi = f(lo), f(hi)
        if step % 2 == 0 and f_lo > f_hi:
            mid = lo + int(round((f_lo - target) / (f_lo - f_hi) * (hi - lo)))
            mid = min(max(mid, lo + 1), hi - 1)
        else:
            mid = (lo + hi) // 2
        step += 1
        if abs(f(mid) - target) <= tolerance * target / 4:
            return
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
