"""``summary.md``: the main table (mean ± std over seeds), the paired verdicts, the notes
and the analysis table, a pure function of the ``results.jsonl`` rows
(:mod:`robustprune.report.rows` lists the fields it reads).

Rows of the same ``(variant, label, setting)`` over different seeds are aggregated:
mean ± sample standard deviation (ddof = 1; no ± with a single seed). ``robust/clean`` is
the last, secondary column: a collapsed model can score well on it; robust accuracy and the
paired verdicts (:mod:`robustprune.report.verdicts`) are the comparison.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from robustprune.errors import RecipeError
from robustprune.report.formatting import fmt_count, fmt_eps, fmt_integer_stat
from robustprune.report.rows import (
    Row,
    check_row,
    cost,
    group_key,
    ordered,
    pruned_nothing,
    robust_over_clean,
)
from robustprune.report.stats import Stat
from robustprune.report.verdicts import paired_verdicts, verdict_table

__all__ = ["SummaryRow", "summarize", "summary_markdown"]


@dataclass(frozen=True)
class SummaryRow:
    """One line of the summary: a model setting aggregated over seeds. ``epochs`` and
    ``attack_steps`` are the total training cost (None where the rows do not record it);
    ``pruned_nothing`` the seeds on which the pruning removed no unit."""

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
    epochs: Stat | None = None
    attack_steps: Stat | None = None
    pruned_nothing: tuple[int, ...] = ()


def summarize(rows: Iterable[Row]) -> list[SummaryRow]:
    """Aggregate rows over seeds, keeping the run's order (dense first, then each method's
    settings in recipe order). Each row is checked first (:func:`~robustprune.report.rows.check_row`:
    a :class:`~robustprune.errors.RecipeError` names the row and the field)."""
    rows = _checked(rows, "summarize")
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in ordered(rows):
        groups.setdefault(group_key(row), []).append(row)
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
                robust_over_clean=Stat.of([robust_over_clean(m) for m in members]) if has_robust else None,
                epochs=Stat.of([cost(m, "epochs") for m in members]),
                attack_steps=Stat.of([cost(m, "attack_steps") for m in members]),
                pruned_nothing=tuple(sorted(int(m["seed"]) for m in members if pruned_nothing(m))),
            )
        )
    return out


def summary_markdown(rows: Iterable[Row], *, title: str | None = None, notes: str = "") -> str:
    """The summary in markdown: the main table (method, setting, MACs kept, params, clean
    acc, robust acc, epochs, attack steps, seeds, robust/clean; accuracies in %, mean ± std
    over seeds), the paired verdicts, the notes (``notes`` appended) and the analysis table."""
    rows = list(rows)
    summary = summarize(rows)
    with_variant = any(s.variant for s in summary)
    with_robust = any(s.robust is not None for s in summary)
    with_cost = any(s.epochs is not None or s.attack_steps is not None for s in summary)
    lines = [f"# {title}", ""] if title else []
    lines += _eval_line(rows)
    lines += _main_table(summary, with_variant=with_variant, with_robust=with_robust, with_cost=with_cost)
    verdicts = verdict_table(paired_verdicts(rows), with_variant=with_variant, with_robust=with_robust)
    if verdicts:
        lines += ["", "## Paired verdicts", "", _VERDICTS_INTRO, ""] + verdicts
    notes_block = _notes(rows, summary, with_robust=with_robust, with_cost=with_cost) + ([notes] if notes else [])
    if notes_block:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes_block]
    analysis = _analysis_table(rows, with_variant)
    if analysis:
        lines += ["", "Analysis (means over the non-head layers and over seeds; see analysis/):", ""]
        lines += analysis
    return "\n".join(lines) + "\n"


_VERDICTS_INTRO = (
    "Each pruned setting minus its baselines at the same MACs target, in accuracy points, "
    "paired over seeds (the same dense model per seed): mean [95% CI, paired t] and the verdict "
    "(better / worse: the CI excludes 0; with one seed: n/a). Reference: the default pipeline "
    "(fixed ratio, one-shot, the same finetune); scratch: the same widths trained from random "
    "initialisation."
)


def _eval_line(rows: Sequence[Row]) -> list[str]:
    ev = (rows[0].get("eval_settings") or {}) if rows else {}
    if ev.get("eps") is None:
        return []
    n_clean = f"all {ev['n_clean']}" if ev.get("n_clean") else "all"
    return [
        f"Clean accuracy on {n_clean} test examples; robust accuracy: "
        f"{', '.join(ev.get('attacks', []))} ({ev.get('norm')}, ε = {fmt_eps(ev['eps'])}, "
        f"{ev.get('n_iter')} iterations) on the first {ev.get('n')}, and robust/clean "
        "on those same examples.",
        "",
    ]


def _main_table(summary: Sequence[SummaryRow], *, with_variant: bool, with_robust: bool, with_cost: bool) -> list[str]:
    header = (["variant"] if with_variant else []) + ["method", "setting", "MACs kept", "params", "clean acc (%)"]
    header += (["robust acc (%)"] if with_robust else []) + (["epochs", "attack steps"] if with_cost else [])
    header += ["seeds"] + (["robust/clean"] if with_robust else [])
    n_left = 3 if with_variant else 2
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < n_left else "---:" for i in range(len(header))) + "|"]
    for s in summary:
        cells = ([s.variant or "–"] if with_variant else []) + [
            s.label,
            s.setting + _pruned_nothing_flag(s),
            s.macs_kept.fmt(100, 1) + "%",
            fmt_count(s.params.mean) + f" ({s.params_kept.mean * 100:.0f}%)",
            s.clean.fmt(100, 1),
        ]
        if with_robust:
            cells.append(s.robust.fmt(100, 1) if s.robust else "–")
        if with_cost:
            cells += [fmt_integer_stat(s.epochs), fmt_integer_stat(s.attack_steps)]
        cells.append(str(len(s.seeds)))
        if with_robust:
            cells.append(s.robust_over_clean.fmt(1, 3) if s.robust_over_clean else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pruned_nothing_flag(s: SummaryRow) -> str:
    if not s.pruned_nothing:
        return ""
    if len(s.pruned_nothing) == len(s.seeds):
        return " (pruned nothing)"
    return f" (pruned nothing on {len(s.pruned_nothing)} of {len(s.seeds)} seeds)"


def _notes(rows: Sequence[Row], summary: Sequence[SummaryRow], *, with_robust: bool, with_cost: bool) -> list[str]:
    out = []
    if with_robust:
        out.append(
            "robust/clean (last column) is secondary: it flatters a collapsed model; compare robust "
            "accuracy and the paired verdicts."
        )
    if with_cost:
        out.append(
            "epochs and attack steps: the total training cost of each model, the dense share included "
            "(attack steps per training example, summed over the dense and finetune phases)."
        )
    empty = [s for s in summary if s.pruned_nothing]
    if empty:
        names = "; ".join(
            f"{s.label} {s.setting}" + (f" ({s.variant})" if s.variant else "")
            + f" (seed{'s' if len(s.pruned_nothing) > 1 else ''} {', '.join(map(str, s.pruned_nothing))})"
            for s in empty
        )
        out.append(f"Pruned nothing (no unit removed; the setting is too weak, e.g. ε too small): {names}.")
    out += _macs_mismatch(rows)
    return out


def _macs_mismatch(rows: Sequence[Row]) -> list[str]:
    def worst(selected: list[Row]) -> float:
        return max(abs(r["macs_kept"] - r["target_macs"]) / r["target_macs"] for r in selected)

    out = []
    matched = [r for r in rows if r.get("matched_to") and r.get("target_macs")]
    if matched:
        out.append(
            "Baselines marked 'matched to' were solved to the MACs that model reached "
            f"(largest relative MACs mismatch: {worst(matched) * 100:.2f}%)."
        )
    targeted = [r for r in rows if not r.get("matched_to") and r.get("target_macs")]
    if targeted:
        out.append(f"Settings with a MACs target reached it within {worst(targeted) * 100:.2f}% (relative).")
    return out


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


def _analysis_table(rows: list[Row], with_variant: bool) -> list[str]:
    analysed = [r for r in rows if isinstance(r.get("analysis"), dict)]
    if not analysed:
        return []
    columns = [c for c in _ANALYSIS_COLUMNS if any(r["analysis"].get(c[0]) is not None for r in analysed)]
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in ordered(analysed):
        groups.setdefault(group_key(row), []).append(row)
    header = (["variant"] if with_variant else []) + ["method", "setting"] + [c[1] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for (variant, label, setting), members in groups.items():
        cells = ([variant or "–"] if with_variant else []) + [label, setting]
        for key, _, scale, digits in columns:
            stat = Stat.of([m["analysis"].get(key) for m in members])
            cells.append(stat.fmt(scale, digits) if stat else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _checked(rows: Iterable[Row], what: str) -> list[Row]:
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, Iterable):
        raise RecipeError(f"{what} needs a list of result rows (read_results(run_dir)), got {type(rows).__name__}.")
    return [check_row(row, f"{what}: row {i + 1}") for i, row in enumerate(rows)]
