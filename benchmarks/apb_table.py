"""A run of ``recipes/cifar10-resnet18-apb.toml`` in the layout of the Adversarial Pruning
Benchmark's structured ResNet-18 CIFAR-10 table, next to the APB rows it compares with.

    python benchmarks/apb_table.py runs/cifar10-resnet18-apb/<timestamp> [--out apb.md]

One line per method and sparsity: clean accuracy and AutoAttack robust accuracy at
eps = 0.031 (APB's budget) and at 8/255, in percent, the mean over the run's seeds (± the
standard deviation with two seeds or more), with the MACs and parameters kept and the seed
count; the APB rows of the same sparsity follow each block. Sparsity is the fraction of
channels the ``fixed`` entry removes in every layer; a ``match = "fixed"`` row takes the
sparsity of the fixed-ratio model it was solved to (equal MACs, its own per-layer widths).
The robust accuracies come from the rows' ``robust_at`` (keys:
:func:`robustprune.recipe.sections.budget_key`); a budget the run did not attack is "–".
A header says whether the run's evaluation matches APB's (CIFAR-10, AutoAttack
"standard", all 10,000 test images); a run that does not (a smoke run) is marked as not
comparable. The reference numbers are :data:`APB_RESNET18_CIFAR10_STRUCTURED` (source:
:data:`APB_SOURCE`); APB reports no 8/255 column.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustprune.recipe.sections import budget_key
from robustprune.report import read_results

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: where :data:`APB_RESNET18_CIFAR10_STRUCTURED` comes from
APB_SOURCE = (
    "APB leaderboard, table 'CIFAR-10 S pruning', ResNet18 columns (clean / AutoAttack robust "
    "accuracy, %; AutoAttack 'standard', Linf eps = 0.031, the 10,000 CIFAR-10 test images, as "
    "utils/test.py test_model_aa evaluates): README.md of "
    "https://github.com/pralab/AdversarialPruningBenchmark at commit 0ae46e7 (2024-09-05), the "
    "benchmark of Piras et al., 'Adversarial Pruning: A Survey and Benchmark of Pruning Methods "
    "for Adversarial Robustness', arXiv 2409.01249"
)
#: APB method -> structured sparsity (%) -> (clean accuracy %, AutoAttack robust accuracy % at eps 0.031)
APB_RESNET18_CIFAR10_STRUCTURED: dict[str, dict[int, tuple[float, float]]] = {
    "RADMM": {50: (79.27, 42.68), 75: (78.81, 40.79), 90: (70.53, 37.30)},
    "HARP": {50: (77.38, 42.73), 75: (80.06, 42.09), 90: (77.88, 41.59)},
    "PwoA": {50: (83.44, 44.79), 75: (81.77, 37.85), 90: (76.41, 28.56)},
    "TwinRep": {50: (79.90, 45.58), 75: (79.37, 45.21), 90: (78.41, 44.30)},
}
#: the budgets of the table's robust columns: APB's 0.031, and 8/255
BUDGETS: tuple[tuple[str, float], ...] = (("0.031", 0.031), ("8/255", 8 / 255))
#: APB's evaluation (what a run must match to be comparable)
APB_EVAL = {"data": "cifar10", "attacks": ["standard"], "n": 10_000}

HEADER = ("sparsity", "method", "source", "clean (%)", *(f"AA ε={name} (%)" for name, _ in BUDGETS),
          "MACs kept", "params kept", "seeds")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (runs/<name>/<timestamp>)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    text = render(args.run_dir)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def render(run_dir: Path) -> str:
    """The markdown page: what the run evaluated, then the table."""
    rows = read_results(run_dir)
    config = _config(run_dir)
    lines = [f"# {config.get('name', 'run')} vs the Adversarial Pruning Benchmark", "", *_evaluation_notes(rows, config)]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * 3 + "---:|" * (len(HEADER) - 3)]
    ours = aggregate(rows)
    for sparsity in sorted({r["sparsity"] for r in ours}, key=lambda s: (s is None, s or 0)):
        lines += [_line(r) for r in ours if r["sparsity"] == sparsity]
        lines += [_line(r) for r in apb_rows() if r["sparsity"] == sparsity]
    lines += ["", f"APB rows: {APB_SOURCE}. APB reports no ε = 8/255 column (–)."]
    return "\n".join(lines)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's rows averaged over seeds, one per (variant, label, sparsity, setting), in
    run order: ``sparsity`` in percent (None: the row has no channel ratio); ``clean``, one
    robust value per :data:`BUDGETS` entry, ``macs_kept`` and ``params_kept`` as
    ``(mean, std, n)`` in percent."""
    by_id = {r["id"]: r for r in rows if "id" in r}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (r.get("variant_index", 0), r.get("order", 0))):
        ratio = channel_ratio(row, by_id)
        sparsity = None if ratio is None else round(100 * ratio)
        key = (row.get("variant", ""), row["label"], sparsity, row["setting"] if ratio is None else "")
        groups.setdefault(key, []).append(row)
    out = []
    for (variant, label, sparsity, setting), members in groups.items():
        method = label if not variant else f"{label} [{variant}]"
        matched = by_id.get(members[0].get("matched_to") or "")
        if matched is not None and members[0]["method"] not in ("scratch", matched["method"]):
            method += " (equal MACs)"  # another method at the MACs of the fixed-ratio model
        out.append({
            "method": method + (f" {setting}" if setting else ""), "source": "this run", "sparsity": sparsity,
            "clean": _stats([m["clean_accuracy"] for m in members]),
            "robust": [_stats([(m.get("robust_at") or {}).get(budget_key(eps)) for m in members])
                       for _, eps in BUDGETS],
            "macs_kept": _stats([m.get("macs_kept") for m in members]),
            "params_kept": _stats([m.get("params_kept") for m in members]),
            "seeds": len({m["seed"] for m in members}),
        })
    return out


def channel_ratio(row: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> float | None:
    """The fraction of channels removed per layer behind ``row``: 0 for the dense model,
    the ``ratio`` setting, or that of the row it was matched to (None: none)."""
    if row.get("label") == "dense":
        return 0.0
    ratio = (row.get("settings") or {}).get("ratio")
    if ratio is not None:
        return float(ratio)
    matched = by_id.get(row.get("matched_to") or "")
    return None if matched is None or matched is row else channel_ratio(matched, by_id)


def apb_rows() -> list[dict[str, Any]]:
    """The reference rows of :data:`APB_RESNET18_CIFAR10_STRUCTURED`, as :func:`aggregate`
    gives ours (single numbers: APB evaluates one checkpoint per method and sparsity)."""
    out = []
    for method, by_sparsity in APB_RESNET18_CIFAR10_STRUCTURED.items():
        for sparsity, (clean, robust) in by_sparsity.items():
            out.append({
                "method": method, "source": "APB", "sparsity": sparsity, "clean": (clean, None, 1),
                "robust": [(robust, None, 1), None], "macs_kept": None, "params_kept": None, "seeds": None,
            })
    return out


def _evaluation_notes(rows: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    settings = next((r.get("eval_settings") for r in rows if r.get("eval_settings")), None) or {}
    data = (config.get("data") or {}).get("name", "?")
    model = (config.get("model") or {}).get("name", "?")
    attacks, n = settings.get("attacks"), settings.get("n")
    budgets = sorted({k for r in rows for k in (r.get("robust_at") or {})}, key=float)
    lines = [
        f"Run: `{config.get('_dir')}`: {model} on {data}, {len({r['seed'] for r in rows})} seed(s); "
        f"robust accuracy: {attacks} ({settings.get('norm', '?')}, {settings.get('n_iter', '?')} "
        f"iterations) on {n} test examples at ε = {', '.join(budgets) or 'none'}. "
        "Values: mean ± std over seeds, in %.",
    ]
    differs = [f"{key} {got!r} (APB: {want!r})" for key, got, want in (
        ("data", data, APB_EVAL["data"]), ("attacks", attacks, APB_EVAL["attacks"]), ("n", n, APB_EVAL["n"]))
        if got != want]
    if differs:
        lines += ["", f"**Not comparable with APB**: this run's {'; '.join(differs)}."]
    return lines


def _line(r: dict[str, Any]) -> str:
    sparsity = "–" if r["sparsity"] is None else f"{r['sparsity']}%"
    cells = [sparsity, r["method"], r["source"], _pct(r["clean"]), *(_pct(v) for v in r["robust"]),
             _fraction(r["macs_kept"]), _fraction(r["params_kept"]), "–" if r["seeds"] is None else str(r["seeds"])]
    return "| " + " | ".join(cells) + " |"


def _stats(values: list[Any]) -> tuple[float, float | None, int] | None:
    """``(mean, std or None, n)`` in percent of the non-missing fractions (None when all are
    missing)."""
    vals = [100 * float(v) for v in values if v is not None]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _pct(stat: tuple[float, float | None, int] | None) -> str:
    """A percentage cell: the mean, and ± the std when there is one."""
    if stat is None:
        return "–"
    mean, std, _ = stat
    return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")


def _fraction(stat: tuple[float, float | None, int] | None) -> str:
    return "–" if stat is None else f"{stat[0]:.1f}%"


def _config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.toml"
    config = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {**config, "_dir": str(run_dir)}


if __name__ == "__main__":
    sys.exit(main())
