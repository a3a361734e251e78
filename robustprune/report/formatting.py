"""How the report writes numbers: counts (5.2k, 1.20M), budgets (8/255), integer
statistics (a cost that can differ between seeds)."""

from __future__ import annotations

from robustprune.report.stats import Stat

__all__ = ["fmt_count", "fmt_eps", "fmt_integer_stat"]


def fmt_count(n: float) -> str:
    """``5.2k``, ``1.20M``, ``812``."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def fmt_eps(eps: float) -> str:
    """An attack budget: ``0.3``, or ``8/255`` where it is a multiple of 1/255."""
    text = f"{eps:g}"
    if len(text) > 6 and abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return text


def fmt_integer_stat(stat: Stat | None) -> str:
    """A whole-number quantity over seeds: the value when it is the same for every seed,
    ``mean ± std`` otherwise, "–" when unknown."""
    if stat is None:
        return "–"
    if stat.std == 0 and float(stat.mean).is_integer():
        return f"{int(stat.mean)}"
    return stat.fmt(1, 0) if stat.std else f"{stat.mean:.1f}"
