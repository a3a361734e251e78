"""Render a run's results: ``summary.md`` (mean ± std over seeds) and ``pareto.png``.

Both are pure functions of ``results.jsonl`` (one JSON row per evaluated model, written by
:func:`robustprune.recipe.run_recipe`), so ``robustprune report RUN_DIR`` re-renders them
at any time, e.g. after a run was interrupted. The keys a row must have::

    variant, seed, label, method, setting, order,
    macs, params, macs_kept, clean_accuracy, robust_accuracy (None: clean only)

and optionally ``robust_clean_accuracy`` (clean accuracy on the attacked examples, the
denominator of robust/clean), ``params_kept``, ``variant_index``, ``analysis``.

Rows of the same ``(variant, label, setting)`` over different seeds are aggregated:
mean ± sample standard deviation (ddof = 1; no ± with a single seed).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustprune._io import atomic_write
from robustprune.errors import RecipeError

__all__ = [
    "SummaryRow",
    "read_results",
    "summarize",
    "summary_markdown",
    "plot_pareto",
    "render_report",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.md"
PARETO_FILE = "pareto.png"


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``std = 0`` for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stat | None:
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return None
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
        return Stat(mean, math.sqrt(var), len(vals))

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        mean = f"{self.mean * scale:.{digits}f}"
        return mean if self.n < 2 else f"{mean} ± {self.std * scale:.{digits}f}"


@dataclass(frozen=True)
class SummaryRow:
    """One line of the summary: a model setting aggregated over seeds."""

    variant: str
    label: str
    method: str
    setting: str
    seeds: tuple[int, ...]
    macs_kept: Stat
    params: Stat
    params_kept: Stat
    clean: Stat
    robust: Stat | None
    robust_over_clean: Stat | None


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``results.jsonl`` (a run directory or the file itself).

    A last line cut short by a killed run is skipped with a warning."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise RecipeError(
            f"No results file at '{p}'. Pass a run directory written by `robustprune run` "
            "(runs/<name>/<timestamp>)."
        )
    rows = []
    lines = p.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                logger.warning("%s: skipping an incomplete last line (an interrupted write)", p)
                continue
            raise RecipeError(f"{p}, line {i + 1}: not valid JSON ({exc}).") from exc
    return rows


def summarize(rows: Iterable[dict[str, Any]]) -> list[SummaryRow]:
    """Aggregate rows over seeds, keeping the run's order (dense first, then each method's
    settings in recipe order)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (r.get("variant_index", 0), r.get("order", 0))):
        groups.setdefault((row.get("variant", ""), row["label"], row["setting"]), []).append(row)
    out = []
    for (variant, label, setting), members in groups.items():
        robust = [m.get("robust_accuracy") for m in members]
        has_robust = all(r is not None for r in robust)
        out.append(
            SummaryRow(
                variant=variant,
                label=label,
                method=members[0].get("method", label),
                setting=setting,
                seeds=tuple(sorted(int(m["seed"]) for m in members)),
                macs_kept=Stat.of([m["macs_kept"] for m in members]),  # type: ignore[arg-type]
                params=Stat.of([m["params"] for m in members]),  # type: ignore[arg-type]
                params_kept=Stat.of([m.get("params_kept", 1.0) for m in members]),  # type: ignore[arg-type]
                clean=Stat.of([m["clean_accuracy"] for m in members]),  # type: ignore[arg-type]
                robust=Stat.of(robust) if has_robust else None,
                robust_over_clean=Stat.of([_robust_over_clean(m) for m in members]) if has_robust else None,
            )
        )
    return out


def _robust_over_clean(row: dict[str, Any]) -> float:
    """Robust over clean accuracy on the same (attacked) examples."""
    if row.get("robust_over_clean") is not None:
        return float(row["robust_over_clean"])
    clean = row.get("robust_clean_accuracy", row["clean_accuracy"])
    return row["robust_accuracy"] / clean if clean > 0 else 0.0


def summary_markdown(rows: Iterable[dict[str, Any]], *, title: str | None = None, notes: str = "") -> str:
    """The summary table in markdown: method, setting, MACs kept, params, clean acc, robust
    acc, robust/clean (accuracies in %, mean ± std over seeds)."""
    rows = list(rows)
    summary = summarize(rows)
    with_variant = any(s.variant for s in summary)
    with_robust = any(s.robust is not None for s in summary)
    header = ["method", "setting", "MACs kept", "params", "clean acc (%)"]
    if with_robust:
        header += ["robust acc (%)", "robust/clean"]
    header.append("seeds")
    if with_variant:
        header.insert(0, "variant")
    lines = []
    if title:
        lines += [f"# {title}", ""]
    if rows:
        ev = rows[0].get("eval_settings") or {}
        if ev.get("eps") is not None:
            n_clean = f"all {ev['n_clean']}" if ev.get("n_clean") else "all"
            lines.append(
                f"Clean accuracy on {n_clean} test examples; robust accuracy: "
                f"{', '.join(ev.get('attacks', []))} ({ev.get('norm')}, ε = {_fmt_eps(ev['eps'])}, "
                f"{ev.get('n_iter')} iterations) on the first {ev.get('n')}, and robust/clean "
                "on those same examples."
            )
            lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < (3 if with_variant else 2) else "---:" for i in range(len(header))) + "|")
    for s in summary:
        cells = [
            s.label,
            s.setting,
            s.macs_kept.fmt(100, 1) + "%",
            _fmt_count(s.params.mean) + f" ({s.params_kept.mean * 100:.0f}%)",
            s.clean.fmt(100, 1),
        ]
        if with_robust:
            cells.append(s.robust.fmt(100, 1) if s.robust else "–")
            cells.append(s.robust_over_clean.fmt(1, 3) if s.robust_over_clean else "–")
        cells.append(str(len(s.seeds)))
        if with_variant:
            cells.insert(0, s.variant or "–")
        lines.append("| " + " | ".join(cells) + " |")
    analysis = _analysis_table(rows, with_variant)
    if analysis:
        lines += ["", "Analysis (means over the non-head layers and over seeds; see analysis/):", ""]
        lines += analysis
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


#: analysis summary keys shown in summary.md: (key, header, scale, digits)
_ANALYSIS_COLUMNS = (
    ("k_sigma_fraction", "k_σ/n", 1.0, 3),
    ("structure_factor_sigma", "S_σ", 1.0, 3),
    ("beta_sigma", "β_σ", 1.0, 3),
    ("lipschitz_naive_2", "naive L̂ (ℓ2)", 1.0, 3),
    ("lipschitz_naive_inf", "naive L̂ (ℓ∞)", 1.0, 3),
    ("gap_bound_2", "gap bound (ℓ2)", 1.0, 3),
    ("gap_bound_inf", "gap bound (ℓ∞)", 1.0, 3),
    ("audit_accuracy_2", "audit acc ℓ2 (%)", 100.0, 1),
    ("audit_accuracy_inf", "audit acc ℓ∞ (%)", 100.0, 1),
)


def _analysis_table(rows: list[dict[str, Any]], with_variant: bool) -> list[str]:
    analysed = [r for r in rows if isinstance(r.get("analysis"), dict)]
    if not analysed:
        return []
    columns = [c for c in _ANALYSIS_COLUMNS if any(r["analysis"].get(c[0]) is not None for r in analysed)]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in sorted(analysed, key=lambda r: (r.get("variant_index", 0), r.get("order", 0))):
        groups.setdefault((row.get("variant", ""), row["label"], row["setting"]), []).append(row)
    header = (["variant"] if with_variant else []) + ["method", "setting"] + [c[1] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for (variant, label, setting), members in groups.items():
        cells = ([variant or "–"] if with_variant else []) + [label, setting]
        for key, _, scale, digits in columns:
            stat = Stat.of([m["analysis"].get(key) for m in members])
            cells.append(stat.fmt(scale, digits) if stat else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_pareto(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """``pareto.png``: MACs kept (x) against clean and robust accuracy (y), one line per
    method (mean over seeds, std as error bars), the dense model marked with a star."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    with_robust = any(s.robust is not None for s in summary)
    panels = [("clean", "clean accuracy (%)")] + ([("robust", "robust accuracy (%)")] if with_robust else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    lines: dict[tuple[str, str], list[SummaryRow]] = {}
    for s in summary:
        lines.setdefault((s.variant, s.label), []).append(s)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (attr, ylabel) in zip(axes[0], panels):
        color_i = 0
        for (variant, label), members in lines.items():
            pts = [(m.macs_kept, getattr(m, attr)) for m in members if getattr(m, attr) is not None]
            if not pts:
                continue
            pts.sort(key=lambda p: p[0].mean)
            name = f"{label} ({variant})" if variant else label
            xs = [p[0].mean * 100 for p in pts]
            ys = [p[1].mean * 100 for p in pts]
            yerr = [p[1].std * 100 for p in pts]
            if label == "dense":
                ax.errorbar(
                    xs, ys, yerr=yerr, fmt="*", markersize=14, color="black" if not variant else colors[color_i % len(colors)],
                    label=name, zorder=5, capsize=3,
                )
            else:
                ax.errorbar(
                    xs, ys, yerr=yerr, fmt="-o", markersize=5, color=colors[color_i % len(colors)],
                    label=name, capsize=3,
                )
            if label != "dense" or variant:
                color_i += 1
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    try:
        atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120))
    finally:
        plt.close(fig)
    return out


def render_report(run_dir: str | os.PathLike[str]) -> str:
    """Re-render ``summary.md`` and ``pareto.png`` of a run directory from its
    ``results.jsonl``; returns the summary markdown."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RecipeError(f"'{d}' is not a directory; pass a run directory (runs/<name>/<timestamp>).")
    rows = read_results(d)
    if not rows:
        raise RecipeError(f"'{d / RESULTS_FILE}' has no rows yet; nothing to report.")
    title = _run_title(d)
    text = summary_markdown(rows, title=title, notes=_notes(rows))
    atomic_write(d / SUMMARY_FILE, text)
    plot_pareto(rows, d / PARETO_FILE, title=title)
    return text


def _run_title(d: Path) -> str:
    return f"{d.parent.name} ({d.name})" if d.parent.name else d.name


def _notes(rows: list[dict[str, Any]]) -> str:
    matched = [r for r in rows if r.get("matched_to")]
    if not matched:
        return ""
    worst = max(abs(r["macs_kept"] - r["target_macs"]) / r["target_macs"] for r in matched if r.get("target_macs"))
    return (
        "Baselines marked 'matched to' were solved to the MACs that model reached "
        f"(largest relative MACs mismatch: {worst * 100:.2f}%)."
    )


def _fmt_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def _fmt_eps(eps: float) -> str:
    text = f"{eps:g}"
    if len(text) > 6 and abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return text
