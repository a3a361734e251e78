"""``pareto.png``: MACs kept (x) against robust and clean accuracy (y), mean over seeds
with the standard deviation as error bars, one series per ``(variant, label)``.

Every series has its own colour and open marker (the dense model a star), so that two
settings with identical results stay distinguishable; points that coincide across series
(within 1% of the axis spans) are also spread apart horizontally by a small, deterministic
offset (:func:`spread_coinciding`), and the x-axis label says so. With more than four
series the legend goes outside the axes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from robustprune._io import atomic_write
from robustprune.report.rows import Row
from robustprune.report.summary import SummaryRow, summarize

__all__ = ["plot_pareto", "spread_coinciding"]

#: open markers, one per series in turn (the dense model: a filled star)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "8")
#: coinciding: within this fraction of both axis spans
COINCIDE = 0.01
#: horizontal step between coinciding points, as a fraction of the x span
SPREAD = 0.012


def plot_pareto(rows: Iterable[Row], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write ``pareto.png`` (atomically) for ``rows``; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    with_robust = any(s.robust is not None for s in summary)
    panels = ([("robust", "robust accuracy (%)")] if with_robust else []) + [("clean", "clean accuracy (%)")]
    series: dict[tuple[str, str], list[SummaryRow]] = {}
    for s in summary:
        series.setdefault((s.variant, s.label), []).append(s)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (attr, ylabel) in zip(axes[0], panels):
        spread = _draw_panel(ax, series, attr, colors)
        ax.set_xlabel("MACs kept (%)" + ("; coinciding points spread apart" if spread else ""))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(handles) > 4:
        fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    elif handles:
        axes[0][0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    try:
        atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return out


def spread_coinciding(points: Sequence[tuple[float, float]], *, x_tol: float, y_tol: float, step: float) -> list[float]:
    """Horizontal offsets that spread apart points which coincide (within ``x_tol`` and
    ``y_tol``, transitively): the ``m`` points of a cluster, in their given order, are
    offset by ``(j - (m - 1) / 2) · step``; a point alone keeps offset 0."""
    parent = list(range(len(points)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (xi, yi) in enumerate(points):
        for j in range(i):
            xj, yj = points[j]
            if abs(xi - xj) <= x_tol and abs(yi - yj) <= y_tol:
                parent[root(i)] = root(j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(points)):
        clusters.setdefault(root(i), []).append(i)
    offsets = [0.0] * len(points)
    for members in clusters.values():
        for j, i in enumerate(members):
            offsets[i] = (j - (len(members) - 1) / 2) * step
    return offsets


def _draw_panel(ax: object, series: dict[tuple[str, str], list[SummaryRow]], attr: str, colors: Sequence[str]) -> bool:
    """Draw every series on ``ax``; returns whether any point had to be spread apart."""
    drawn = []  # (name, is_dense, variant, [(x, y, yerr)])
    for (variant, label), members in series.items():
        pts = sorted(
            ((m.macs_kept.mean * 100, getattr(m, attr).mean * 100, getattr(m, attr).std * 100)
             for m in members if getattr(m, attr) is not None),
            key=lambda p: p[0],
        )
        if pts:
            drawn.append((f"{label} ({variant})" if variant else label, label == "dense", variant, pts))
    flat = [(x, y) for *_, pts in drawn for x, y, _ in pts]
    if not flat:
        return False
    x_span = max(max(p[0] for p in flat) - min(p[0] for p in flat), 1.0)
    y_span = max(max(p[1] for p in flat) - min(p[1] for p in flat), 1.0)
    offsets = spread_coinciding(flat, x_tol=COINCIDE * x_span, y_tol=COINCIDE * y_span, step=SPREAD * x_span)
    k = 0
    for i, (name, dense, variant, pts) in enumerate(drawn):
        xs = [x + offsets[k + j] for j, (x, _, _) in enumerate(pts)]
        k += len(pts)
        style: dict[str, Any] = {"color": "black" if dense and not variant else colors[i % len(colors)]}
        if dense:
            style.update(fmt="*", markersize=13, zorder=5)
        else:
            style.update(fmt="-" + MARKERS[i % len(MARKERS)], markersize=6 + (i % 3), markerfacecolor="none",
                         markeredgewidth=1.4, linewidth=1.0, alpha=0.9)
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], label=name, capsize=3, **style)  # type: ignore[attr-defined]
    return any(offsets)
