"""Quality benchmarks on CPU (issue 7, items 1-3): does ε-pruning keep robustness better
than fixed ratios at the same MACs?

Each experiment is a recipe run by :func:`robustprune.recipe.run_recipe` (the same runner
as ``robustprune run``), so every model is trained, pruned, finetuned and evaluated exactly
as a user's recipe would be; this script only builds the recipes and tabulates their
``results.jsonl``.

1. ``cnn-small`` on digits, PGD-AT dense model, pruned to 50% and 25% of the MACs by
   ε-pruning, ε-pruning + β-control (BetaDispersion in the finetune), fixed-ratio,
   global-magnitude and spectral pruning, each solved to the MACs target
   (``target_macs``), finetuned adversarially with the same budget, and the same with a
   standard finetune; clean and APGD-CE + APGD-T accuracy; mean ± std over seeds.
2. Layer collapse: the same methods at 10% of the MACs: how many layers are left with
   ≤ 2 channels (rank for spectral) and what that does to accuracy.
3. ``resnet18-cifar`` (width 16) on digits upsampled to 32x32, one seed, the same methods
   at 50% of the MACs.

Run::

    python benchmarks/run_quality.py            # full: 3 seeds (about 30 minutes on 2 cores)
    python benchmarks/run_quality.py --quick    # 1 seed, fewer epochs
    python benchmarks/run_quality.py --dry-run  # seconds-to-a-minute smoke run (used by the tests)

Writes ``quality.md``, ``quality.json`` and ``quality_pareto.png`` to ``--out``
(default ``benchmarks/results``); the run folders go to ``--runs`` (default ``runs/``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustprune.recipe import parse_recipe, run_recipe

METHODS: tuple[tuple[str, str, list[dict[str, Any]]], ...] = (
    # (label, method, finetune regularizers)
    ("epsilon", "epsilon", []),
    ("epsilon+beta", "epsilon", [{"kind": "beta", "weight": 10.0, "top": 0.05}]),
    ("fixed", "fixed", []),
    ("global", "global", []),
    ("spectral", "spectral", []),
)


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...]
    train_epochs: int
    finetune_epochs: int
    targets: tuple[float, ...]
    collapse_target: float
    n_examples: int
    n_iter: int
    resnet_epochs: int
    resnet_finetune_epochs: int
    resnet_n_examples: int
    cnn_widths: tuple[int, ...] = (16, 32, 64)
    resnet_width: int = 16
    eps: float = 0.2  # Linf budget on [0, 1] digits pixels, as in recipes/digits-cnn.toml
    steps: int = 5


FULL = Settings((0, 1, 2), 20, 5, (0.5, 0.25), 0.1, 200, 100, 8, 3, 100)
QUICK = Settings((0,), 10, 3, (0.5, 0.25), 0.1, 100, 50, 3, 1, 50)
DRY = Settings((0,), 1, 1, (0.5,), 0.1, 16, 5, 1, 1, 8, cnn_widths=(8, 16), resnet_width=4, steps=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 seed, fewer epochs")
    mode.add_argument("--dry-run", action="store_true", help="tiny settings, checks the script runs")
    parser.add_argument("--only", default="cnn,resnet", help="comma-separated: cnn (items 1-2), resnet (item 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these small models)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    s = DRY if args.dry_run else QUICK if args.quick else FULL
    label = "dry-run" if args.dry_run else "quick" if args.quick else "full"
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    progress = not args.dry_run

    started = time.perf_counter()
    sections, payload = [], {"mode": label, "settings": s.__dict__}
    if "cnn" in only:
        adv = _run(_cnn_recipe(s, "quality-cnn-adv", adversarial_finetune=True, collapse=True), args, progress)
        std = _run(_cnn_recipe(s, "quality-cnn-std", adversarial_finetune=False, collapse=False), args, progress)
        payload["cnn"] = {"adversarial_finetune": adv, "standard_finetune": std}
        sections.append(_quality_markdown(adv, std, s))
        sections.append(_collapse_markdown(adv, s))
        _plot(args.out / "quality_pareto.png", adv, std)
    if "resnet" in only:
        res = _run(_resnet_recipe(s), args, progress)
        payload["resnet"] = res
        sections.append(_resnet_markdown(res, s))
    elapsed = time.perf_counter() - started
    command = "python benchmarks/run_quality.py" + {"quick": " --quick", "dry-run": " --dry-run"}.get(label, "")
    header = (
        f"# Quality: ε-pruning vs baselines at matched MACs ({label})\n\n"
        f"Command: `{command}`; {elapsed / 60:.1f} min on {platform.machine()} ({args.threads} torch "
        f"thread(s)), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Digits (1,437 train / 360 "
        f"test), ℓ∞ budget {s.eps} for PGD-{s.steps} training and for APGD-CE + APGD-T "
        f"({s.n_iter} iterations) on the first {s.n_examples} test digits; clean accuracy on all 360. "
        "Every model is solved to its MACs target with `target_macs` (bisection, within 1% where "
        "the method's granularity allows).\n"
    )
    text = header + "\n" + "\n".join(sections)
    if "cnn" in only:
        text += "\n![MACs kept vs accuracy](quality_pareto.png)\n"
    (args.out / "quality.md").write_text(text)
    (args.out / "quality.json").write_text(json.dumps(payload, indent=1, default=str))
    print(text)
    return 0


# --------------------------------------------------------------------------- recipes


def _prune_entries(targets: Sequence[float], collapse: float | None = None) -> list[dict[str, Any]]:
    """One [[prune]] entry per method. Spectral pruning only factorizes layers (rank r of
    a k x k conv followed by a 1x1), so it cannot reach the collapse target: it is left
    out there (the table says so)."""
    entries = []
    for label, method, regs in METHODS:
        wanted = list(targets) + ([collapse] if collapse is not None and method != "spectral" else [])
        entry: dict[str, Any] = {"method": method, "label": label, "target_macs": wanted}
        if regs:
            entry["regularizers"] = regs
        entries.append(entry)
    return entries


def _common(s: Settings, name: str) -> dict[str, Any]:
    adv = {"kind": "pgd", "norm": "Linf", "eps": s.eps, "steps": s.steps}
    return {
        "name": name,
        "seeds": list(s.seeds),
        "data": {"name": "digits", "batch_size": 64},
        "train": {"epochs": s.train_epochs, "lr": 0.05, "adversarial": adv},
        "eval": {
            "norm": "Linf",
            "eps": s.eps,
            "attacks": ["apgd-ce", "apgd-t"],
            "n_examples": s.n_examples,
            "n_iter": s.n_iter,
            "latency": False,
        },
    }


def _cnn_recipe(s: Settings, name: str, *, adversarial_finetune: bool, collapse: bool) -> dict[str, Any]:
    raw = _common(s, name)
    raw["model"] = {"name": "cnn-small", "widths": list(s.cnn_widths)}
    raw["prune"] = _prune_entries(s.targets, s.collapse_target if collapse else None)
    finetune: dict[str, Any] = {"epochs": s.finetune_epochs, "lr": 0.01}
    if adversarial_finetune:
        finetune["adversarial"] = raw["train"]["adversarial"]
    raw["finetune"] = finetune
    return raw


def _resnet_recipe(s: Settings) -> dict[str, Any]:
    raw = _common(s, "quality-resnet18")
    raw["seeds"] = [s.seeds[0]]
    raw["data"] = {"name": "digits", "batch_size": 64, "size": 32}
    raw["model"] = {"name": "resnet18-cifar", "width": s.resnet_width}
    raw["train"]["epochs"] = s.resnet_epochs
    raw["prune"] = _prune_entries([0.5])
    raw["finetune"] = {"epochs": s.resnet_finetune_epochs, "lr": 0.01, "adversarial": raw["train"]["adversarial"]}
    raw["eval"]["n_examples"] = s.resnet_n_examples
    return raw


def _run(raw: dict[str, Any], args: argparse.Namespace, progress: bool) -> list[dict[str, Any]]:
    recipe = parse_recipe({**raw, "output": str(args.runs)}, source=f"benchmarks/run_quality.py:{raw['name']}")
    result = run_recipe(recipe, device=args.device, progress=progress)
    print(f"{raw['name']}: {result.run_dir}", file=sys.stderr)
    return [_compact(r) for r in result.rows]


def _compact(row: dict[str, Any]) -> dict[str, Any]:
    prune = row.get("prune") or {}
    small = [r for r in prune.get("rows", []) if r.get("kept") is not None and r["kept"] <= 2]
    return {
        "id": row["id"],
        "label": row["label"],
        "method": row["method"],
        "seed": row["seed"],
        "target": (row.get("settings") or {}).get("target_macs"),
        "macs_kept": row["macs_kept"],
        "params_kept": row["params_kept"],
        "clean": row["clean_accuracy"],
        "robust": row["robust_accuracy"],
        "robust_clean": row.get("robust_clean_accuracy"),
        "layers_le2": len(small),
        "layers_total": len(prune.get("rows", [])),
        "min_kept": min((r["kept"] for r in prune.get("rows", []) if r.get("kept") is not None), default=None),
    }


# --------------------------------------------------------------------------- tables


def _ms(values: list[float], pct: bool = True) -> str:
    scale = 100.0 if pct else 1.0
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, float | None], list[dict[str, Any]]]:
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["target"])].append(r)
    return groups


def _quality_markdown(adv: list[dict[str, Any]], std: list[dict[str, Any]], s: Settings) -> str:
    ga, gs = _group(adv), _group(std)
    lines = [
        "## 1. `cnn-small` on digits: ε-pruning vs baselines at 50% and 25% of the MACs",
        "",
        f"Dense model: PGD-{s.steps} adversarial training, {s.train_epochs} epochs; every pruned model "
        f"finetuned {s.finetune_epochs} epochs, adversarially (PGD-{s.steps}, same budget) or with a "
        f"standard finetune. Accuracies in %, mean ± std over seeds {list(s.seeds)}.",
        "",
        "| method | MACs target | MACs kept (%) | params kept (%) | clean, adv. finetune | robust, adv. finetune | clean, std finetune | robust, std finetune |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = [("dense", None)] + [(label, t) for t in s.targets for label, _, _ in METHODS]
    for key in keys:
        a, b = ga.get(key, []), gs.get(key, [])
        if not a:
            continue
        lines.append(
            f"| {key[0]} | {'–' if key[1] is None else f'{key[1]:.0%}'} | {_ms([r['macs_kept'] for r in a])} | "
            f"{_ms([r['params_kept'] for r in a])} | {_ms([r['clean'] for r in a])} | {_ms([r['robust'] for r in a])} | "
            f"{_ms([r['clean'] for r in b])} | {_ms([r['robust'] for r in b])} |"
        )
    return "\n".join(lines) + "\n"


def _collapse_markdown(adv: list[dict[str, Any]], s: Settings) -> str:
    ga = _group(adv)
    lines = [
        f"## 2. Layer collapse at {s.collapse_target:.0%} of the MACs",
        "",
        "Layers (dependency groups; for spectral, factorized layers by their rank) left with ≤ 2 "
        "channels, the smallest width left, and the accuracy after the adversarial finetune; mean over "
        "seeds (± std).",
        "",
        "| method | MACs kept (%) | layers with ≤ 2 channels | smallest width | clean | robust |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, method, _ in METHODS:
        rows = ga.get((label, s.collapse_target), [])
        if method == "spectral":
            lines.append(f"| {label} | not reachable: factorizing every layer still keeps more than {s.collapse_target:.0%} of the MACs | – | – | – | – |")
            continue
        if not rows:
            continue
        le2 = _ms([float(r["layers_le2"]) for r in rows], pct=False)
        total = rows[0]["layers_total"]
        lines.append(
            f"| {label} | {_ms([r['macs_kept'] for r in rows])} | {le2} of {total} | "
            f"{min(r['min_kept'] for r in rows if r['min_kept'] is not None) if any(r['min_kept'] is not None for r in rows) else '–'} | "
            f"{_ms([r['clean'] for r in rows])} | {_ms([r['robust'] for r in rows])} |"
        )
    return "\n".join(lines) + "\n"


def _resnet_markdown(rows: list[dict[str, Any]], s: Settings) -> str:
    lines = [
        f"## 3. `resnet18-cifar` (width {s.resnet_width}) on digits upsampled to 32x32, 50% of the MACs",
        "",
        f"One seed; dense PGD-{s.steps} training {s.resnet_epochs} epochs, adversarial finetune "
        f"{s.resnet_finetune_epochs} epochs; robust accuracy on the first {s.resnet_n_examples} test digits.",
        "",
        "| method | MACs kept (%) | params kept (%) | clean (%) | robust (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {100 * r['macs_kept']:.1f} | {100 * r['params_kept']:.1f} | {100 * r['clean']:.1f} | "
            f"{100 * r['robust']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(path: Path, adv: list[dict[str, Any]], std: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, rows, title in ((axes[0], adv, "adversarial finetune"), (axes[1], std, "standard finetune")):
        groups = _group(rows)
        dense = groups.get(("dense", None), [])
        for label, _, _ in METHODS:
            pts = sorted(
                (statistics.fmean(r["macs_kept"] for r in g), statistics.fmean(r["robust"] for r in g))
                for (lab, _t), g in groups.items()
                if lab == label
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if dense:
            ax.scatter([1.0], [statistics.fmean(r["robust"] for r in dense)], marker="*", s=150, c="k", label="dense")
        ax.set_title(f"cnn-small on digits, {title}")
        ax.set_xlabel("MACs kept")
        ax.set_ylabel("APGD robust accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
