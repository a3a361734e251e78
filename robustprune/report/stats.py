"""Statistics of a run's results: mean ± std over seeds, and paired differences with a
95% confidence interval and a verdict.

Two settings evaluated on the same seeds share the dense model of each seed, so they are
compared *paired*: with ``d_i = a_i - b_i`` over the ``n`` seeds both have,

    mean  d̄ = Σ d_i / n,    s = sqrt(Σ (d_i - d̄)² / (n - 1)),
    CI    d̄ ± t_{0.975, n-1} · s / sqrt(n)          (the paired t-interval)

and the verdict is ``"better"`` when the whole CI lies above 0, ``"worse"`` when it lies
below 0, ``"no significant difference"`` otherwise. With a single pair there is no interval:
the difference and ``"n/a (1 seed)"``. When every d_i is the same (s = 0, n ≥ 2) the CI is
the degenerate [d̄, d̄]: better or worse by the sign of d̄, no difference when d̄ = 0.
Differences are rounded to 1e-12 first (accuracies are ratios of counts), so float noise in
two identical results never reads as a verdict.

The t quantile is computed exactly for every integer df (the closed-form Student t CDF of
Abramowitz & Stegun 26.7.3-4, inverted by bisection); no scipy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robustprune.errors import InvalidArgumentError

__all__ = [
    "Stat",
    "PairedDifference",
    "paired_difference",
    "t_quantile",
    "BETTER",
    "WORSE",
    "NO_DIFFERENCE",
    "SINGLE_SEED",
]

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"
SINGLE_SEED = "n/a (1 seed)"

#: differences are rounded to this many decimals before any statistic
_DECIMALS = 12


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``std = 0`` for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Sequence[float | None]) -> Stat | None:
        """The statistic of the values that are not None; None when there are none."""
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return None
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
        return Stat(mean, math.sqrt(var), len(vals))

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        """``mean ± std`` (only the mean for a single value), both times ``scale``."""
        mean = f"{self.mean * scale:.{digits}f}"
        return mean if self.n < 2 else f"{mean} ± {self.std * scale:.{digits}f}"


@dataclass(frozen=True)
class PairedDifference:
    """The paired difference ``a - b`` over ``n`` seeds: its mean, its 95% CI (``low``,
    ``high``; None with a single pair) and the verdict word."""

    n: int
    mean: float
    low: float | None
    high: float | None
    verdict: str

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``+1.2 [-0.3, +2.7]`` (the mean and the CI times ``scale``; the mean alone for
        a single pair)."""
        mean = f"{self.mean * scale:+.{digits}f}"
        if self.low is None or self.high is None:
            return mean
        return f"{mean} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"


def paired_difference(
    a: Mapping[Any, float | None], b: Mapping[Any, float | None], *, level: float = 0.95
) -> PairedDifference | None:
    """The paired difference ``a - b`` over the seeds (keys) that both have a value for;
    seeds missing on either side, or None there, are skipped. None when no seed pairs.

    Values must be finite real numbers (or None), seeds integers and ``level`` in (0, 1):
    anything else is an :class:`~robustprune.errors.InvalidArgumentError` (a NaN would make
    every statistic NaN and read as "no significant difference")."""
    _check_paired(a, b, level)
    seeds = sorted(k for k, v in a.items() if v is not None and b.get(k) is not None)
    diffs = [round(float(a[k]) - float(b[k]), _DECIMALS) for k in seeds]  # type: ignore[arg-type]
    n = len(diffs)
    if n == 0:
        return None
    mean = round(sum(diffs) / n, _DECIMALS)
    if n == 1:
        return PairedDifference(1, mean, None, None, SINGLE_SEED)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    low, high = round(mean - half, _DECIMALS), round(mean + half, _DECIMALS)
    verdict = BETTER if low > 0 else WORSE if high < 0 else NO_DIFFERENCE
    return PairedDifference(n, mean, low, high, verdict)


def _check_paired(a: Any, b: Any, level: Any) -> None:
    for name, side in (("a", a), ("b", b)):
        if not isinstance(side, Mapping):
            raise InvalidArgumentError(
                f"paired_difference: {name} must map each seed to its value ({{seed: value}}), got "
                f"{type(side).__name__}.", argument=name)
        for seed, value in side.items():
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise InvalidArgumentError(
                    f"paired_difference: {name}'s seeds must be integers, got {seed!r}.", argument=name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InvalidArgumentError(
                    f"paired_difference: {name}[{seed}] must be a finite number or None, got {value!r}.",
                    argument=name)
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0.0 < level < 1.0:
        raise InvalidArgumentError(f"paired_difference: level must be in (0, 1), e.g. 0.95, got {level!r}.",
                                   argument="level")


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided critical value of Student's t with ``df`` degrees of freedom:
    ``t`` with ``P(|T| ≤ t) = level`` (2.776 for df = 4 at 95%)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_quantile: df must be a positive integer, got {df!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_quantile: level must be in (0, 1), got {level!r}")
    lo, hi = 0.0, 1.0
    while _t_central_probability(hi, int(df)) < level:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_central_probability(mid, int(df)) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def _t_central_probability(t: float, df: int) -> float:
    """``P(|T| ≤ t)`` for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4):
    with θ = atan(t / √df), for odd df ``(2/π)(θ + sinθ Σ_j c_j cos^(2j-1)θ)``, for even df
    ``sinθ Σ_j c_j cos^(2j)θ``, each a finite series of ⌊df/2⌋ terms."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    cos2 = cos * cos
    if df % 2:
        term, total = cos, 0.0
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * j) / (2 * j + 1)
        return (2.0 / math.pi) * (theta + sin * total) if df > 1 else 2.0 * theta / math.pi
    term, total = 1.0, 0.0
    for j in range(1, df // 2 + 1):
        total += term
        term *= cos2 * (2 * j - 1) / (2 * j)
    return sin * total
