"""The tables of ``benchmarks/run_quality.py``: pure functions of the recipe rows.

Paired statistics come from :mod:`robustprune.report.stats` (paired t 95% CI over the seeds
both sides have, the same dense model per seed), the same code as every run's summary.md.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from robustprune.report.stats import BETTER, PairedDifference, paired_difference

#: the quality aims of the project, checked and reported (never tuned to)
AIM_OF_DENSE = {0.25: 0.97, 0.1: 0.90}  # framing (a): robust accuracy kept, fraction of dense
AIM_VS_SCRATCH = 0.02  # framing (b): beat scratch by this much (robust accuracy)
AIM_VS_DEFAULT = {0.25: 0.05, 0.1: 0.08}  # framing (b): beat the default pipeline by this much

DESCRIPTIONS = {
    "fixed": "fixed ratio, one-shot, 25% finetune (the default pipeline)",
    "epsilon": "ε-pruning, one-shot, 25% finetune",
    "global": "global magnitude, one-shot, 25% finetune",
    "sensitivity": "sensitivity allocation, one-shot, 25% finetune",
    "adv-taylor": "fixed ratio with adversarial-Taylor importance, one-shot, 25% finetune",
    "iterative": "fixed ratio, iterative (3 steps, lr restarted), 25% finetune",
    "distill": "fixed ratio, one-shot, 25% finetune + distillation",
    "beta": "fixed ratio, one-shot, 25% finetune + β-dispersion",
    "alignment": "fixed ratio, one-shot, 25% finetune + alignment",
    "lr-rewind": "fixed ratio, one-shot, 25% finetune at the dense lr",
    "fixed-long": "fixed ratio, one-shot, 100% finetune",
    "distill-long": "fixed ratio, one-shot, 100% finetune + distillation",
    "early": "fixed ratio, during-training (pruned early), no finetune",
    "early+ft": "fixed ratio, during-training (pruned early), + 25% finetune",
    "scratch": "scratch: the default's widths, trained from initialisation",
    "scratch-long": "scratch: the same widths, as many epochs as the 100% finetune pipeline",
    "scratch-early": "scratch: the same widths, as many epochs as the during-training model",
}


def compact(row: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a results row that the tables use (what quality.json keeps)."""
    return {
        "id": row["id"], "label": row["label"], "method": row["method"], "seed": row["seed"],
        "compare_key": row.get("compare_key"), "target_macs": row.get("target_macs"),
        "macs_kept": row["macs_kept"], "params_kept": row["params_kept"],
        "clean": row["clean_accuracy"], "robust": row["robust_accuracy"],
        "epochs": (row.get("cost") or {}).get("epochs"), "attack_steps": (row.get("cost") or {}).get("attack_steps"),
        "reference": row.get("reference"), "scratch": row.get("scratch"),
        "seconds": row.get("seconds"), "pruned_nothing": row.get("pruned_nothing"),
    }


def header(s: Any, label: str, command: str, minutes: float, jobs: int) -> str:
    return (
        f"# Quality: what keeps a pruned model robust ({label})\n\n"
        f"Command: `{command}`; {minutes:.1f} min on {platform.machine()} with {jobs} worker process(es) of "
        f"one torch thread each, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.\n\n"
        f"Digits: a {s.validation:.0%} validation split of the training set (regularizer weights "
        f"and the sensitivity measurements use it; the test set is never used to choose), the "
        f"rest for training; ℓ∞ budget {s.eps} for the PGD training attacks and for APGD-CE + "
        f"APGD-T ({s.n_iter} iterations) on {'all 360' if s.n_examples is None else f'the first {s.n_examples}'} "
        "test digits; clean accuracy on all 360. Accuracies in %, mean ± std over seeds; Δ are "
        "paired over seeds (the same dense model per seed): mean [95% CI, paired t] and the "
        "verdict (better / worse when the CI excludes 0). `epochs` is each model's total "
        "training, the dense share included.\n"
    )


def _core_minutes(rows: list[dict[str, Any]]) -> float:
    """The jobs' own time: the sum of the rows' ``seconds`` (each job on one thread), in minutes."""
    return sum(float(r.get("seconds") or 0.0) for r in rows) / 60


def part_markdown(part: Any, s: Any, rows: list[dict[str, Any]], weights: dict[str, float],
                  selection: list[dict[str, Any]], minutes: float) -> str:
    short = max(1, round(s.short * part.dense_epochs))
    lines = [
        f"## {part.name} ({_model_text(part)})", "",
        f"Dense: PGD-{part.steps} adversarial training, {part.dense_epochs} epochs, lr 0.05 cosine; "
        f"finetunes: PGD-{part.steps}, lr 0.01 cosine, {short} epochs (25%) or {part.dense_epochs} "
        f"(100%); during-training entries prune before epoch {part.early}. Seeds {list(part.seeds)}; "
        f"{minutes:.1f} min of wall time in this invocation, and {_core_minutes(rows):.0f} core-minutes "
        "of job time (the rows' own seconds; the wall time of a resumed run counts only its last "
        "invocation).", "",
    ]
    by = _index(rows)
    dense = {seed: r["robust_accuracy"] for (label, _key, seed), r in by.items() if label == "dense"}
    dense_clean = {seed: r["clean_accuracy"] for (label, _key, seed), r in by.items() if label == "dense"}
    lines += [f"Dense model: clean {_ms(dense_clean.values())}, robust {_ms(dense.values())}.", ""]
    if selection:
        lines += _selection_table(selection, weights)
    labels = [e for e in part.entries if any(k[0] == e for k in by)]
    for target in part.targets:
        lines += _target_table(by, labels, target, dense)
    lines += _framing_a(by, labels, part, dense)
    lines += _framing_b(by, labels, part)
    lines += _no_help(by, labels, part)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- tables


def _target_table(by: dict, labels: Sequence[str], target: float, dense: dict[int, float]) -> list[str]:
    key = f"target_macs={target:g}"
    lines = [
        f"### {target:.0%} of the MACs", "",
        "| entry | what | MACs kept | clean | robust | % of dense robust | epochs | Δ robust vs default | Δ robust vs scratch | Δ clean vs default |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        mine = _values(by, label, key)
        if not mine:
            continue
        first = next(iter(mine.values()))
        ref, scr = first.get("reference"), first.get("scratch")
        lines.append(
            f"| {label} | {DESCRIPTIONS.get(label, '')} | {_ms([r['macs_kept'] for r in mine.values()])} | "
            f"{_ms([r['clean_accuracy'] for r in mine.values()])} | {_ms([r['robust_accuracy'] for r in mine.values()])} | "
            f"{_ms([r['robust_accuracy'] / dense[s] for s, r in mine.items() if dense.get(s)])} | "
            f"{_epochs(mine)} | {_delta(by, label, ref, key)} | {_delta(by, label, scr, key)} | "
            f"{_delta(by, label, ref, key, metric='clean_accuracy')} |"
        )
    return lines + [""]


def _framing_a(by: dict, labels: Sequence[str], part: Any, dense: dict[int, float]) -> list[str]:
    """(a) I already have a robust model: the best 25%-finetune pipeline per target."""
    short_labels = [x for x in labels if x not in ("fixed-long", "distill-long", "early", "early+ft") and not x.startswith("scratch")]
    lines = ["### Framing (a): I already have a robust model (finetune = 25% of the dense epochs)", "",
             "| MACs | default: % of dense robust | best 25% pipeline | its % of dense robust | aim | reached | Δ best vs default |",
             "|---:|---:|---|---:|---:|---|---:|"]
    for target in part.targets:
        key = f"target_macs={target:g}"
        ratio = {lab: _ratio(by, lab, key, dense) for lab in short_labels}
        ratio = {k: v for k, v in ratio.items() if v}
        if not ratio:
            continue
        best = max(ratio, key=lambda k: statistics.fmean(ratio[k]))
        aim = AIM_OF_DENSE.get(target)
        reached = "–" if aim is None else ("yes" if statistics.fmean(ratio[best]) >= aim else "no")
        lines.append(
            f"| {target:.0%} | {_ms(ratio.get('fixed', []))} | {best} | {_ms(ratio[best])} | "
            f"{'–' if aim is None else f'≥ {aim:.0%}'} | {reached} | {_delta(by, best, 'fixed', key)} |"
        )
    return lines + ["", "(The best pipeline is picked on the test set here only to report it; the aims are "
                    "read off, never tuned.)", ""]


def _framing_b(by: dict, labels: Sequence[str], part: Any) -> list[str]:
    """(b) Equal total epochs: every pipeline against scratch at its own epoch count, and
    the pipelines that cost what the default costs against the default."""
    lines = ["### Framing (b): equal total epochs (dense share included)", "",
             "| MACs | entry | epochs | Δ robust vs scratch at equal epochs | Δ robust vs default | aims (vs scratch / vs default) |",
             "|---:|---|---:|---:|---:|---|"]
    pairs = [("fixed", "scratch"), ("early+ft", "scratch"), ("fixed-long", "scratch-long"),
             ("distill-long", "scratch-long"), ("early", "scratch-early")]
    for target in part.targets:
        key = f"target_macs={target:g}"
        for label, scratch in pairs:
            if label not in labels or scratch not in labels or not _values(by, label, key):
                continue
            epochs = _epochs(_values(by, label, key))
            vs_default = _delta(by, label, "fixed", key) if label != "fixed" else "–"
            aim = f"≥ +{AIM_VS_SCRATCH * 100:.0f} / ≥ +{AIM_VS_DEFAULT[target] * 100:.0f}" if target in AIM_VS_DEFAULT else "–"
            lines.append(f"| {target:.0%} | {label} | {epochs} | {_delta(by, label, scratch, key)} | {vs_default} | {aim} |")
    return lines + [""]


def _no_help(by: dict, labels: Sequence[str], part: Any) -> list[str]:
    """Techniques that did not beat their reference at any target (CI excludes 0 nowhere)."""
    out = []
    for label in labels:
        first = next((r for (lab, _k, _s), r in by.items() if lab == label), None)
        ref = None if first is None else first.get("reference")
        if label in ("dense", ref) or ref is None or label.startswith("scratch"):
            continue
        diffs = [_diff(by, label, ref, f"target_macs={t:g}") for t in part.targets]
        if not any(d is not None and d.verdict == BETTER for d in diffs):
            cells = ", ".join(f"{t:.0%}: {d.fmt() + ' ' + d.verdict if d else '–'}" for t, d in zip(part.targets, diffs))
            out.append(f"- **{label}** ({DESCRIPTIONS.get(label, '')}) vs {ref}: {cells}")
    if not out:
        return []
    return ["### What did not help (no target where the 95% CI of Δ robust lies above 0)", "", *out, ""]


def _selection_table(selection: list[dict[str, Any]], weights: dict[str, float]) -> list[str]:
    lines = ["Regularizer weights, chosen on the validation split (first seed, 25% MACs, 25% finetune; "
             "validation robust accuracy, APGD-CE + APGD-T):", "",
             "| regularizer | weight | validation clean | validation robust | chosen |", "|---|---:|---:|---:|---|"]
    for r in selection:
        lines.append(f"| {r['kind']} | {r['weight']:g} | {100 * r['val_clean']:.1f} | {100 * r['val_robust']:.1f} | "
                     f"{'✓' if r['chosen'] else ''} |")
    return lines + [""]


# --------------------------------------------------------------------------- helpers


def _index(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["label"], r.get("compare_key") or "dense", int(r["seed"])): r for r in rows}


def _values(by: dict, label: str, key: str) -> dict[int, dict[str, Any]]:
    return {seed: r for (lab, k, seed), r in by.items() if lab == label and k == key}


def _diff(by: dict, a: str | None, b: str | None, key: str, metric: str = "robust_accuracy") -> PairedDifference | None:
    if a is None or b is None or a == b:
        return None
    va = {s: r[metric] for s, r in _values(by, a, key).items()}
    vb = {s: r[metric] for s, r in _values(by, b, key).items()}
    return paired_difference(va, vb)


def _delta(by: dict, a: str | None, b: str | None, key: str, metric: str = "robust_accuracy") -> str:
    d = _diff(by, a, b, key, metric)
    return "–" if d is None else f"{d.fmt()} {d.verdict}"


def _ratio(by: dict, label: str, key: str, dense: dict[int, float]) -> list[float]:
    return [r["robust_accuracy"] / dense[s] for s, r in _values(by, label, key).items() if dense.get(s)]


def _epochs(mine: dict[int, dict[str, Any]]) -> str:
    values = {(r.get("cost") or {}).get("epochs") for r in mine.values()}
    return "–" if not values or None in values else "/".join(str(v) for v in sorted(values))


def _ms(values: Iterable[float]) -> str:
    vals = [100.0 * float(v) for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def _model_text(part: Any) -> str:
    model = dict(part.model)
    name = model.pop("name")
    size = part.data.get("size")
    return f"`{name}` {model}" + (f", digits upsampled to {size}x{size}" if size else ", 8x8 digits")

