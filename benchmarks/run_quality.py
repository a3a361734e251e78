"""Quality benchmark: what keeps a pruned model robust, measured honestly.

Two models on the embedded digits data (1,293 train / 144 validation / 360 test digits):
``cnn-small`` ([16, 32, 64], 8x8 inputs) and ``resnet18-cifar`` (width 16, digits upsampled
to 32x32), PGD-AT dense models, pruned to 50/25/10% of the MACs and evaluated with APGD-CE
+ APGD-T (100 iterations) on all 360 test digits, over several seeds. Every model is built
by a recipe and :func:`robustprune.recipe.run_recipe` (the same runner as ``robustprune
run``), so each one is trained, pruned, finetuned and evaluated exactly as a user's recipe
would do it; the seeds run in parallel worker processes (``--jobs``).

What is compared, against the default pipeline (fixed ratio, one-shot, a finetune of 25%
of the dense epochs) and the scratch baseline (the same widths trained from random
initialisation for the same total epochs), paired over seeds with a 95% CI:

- criterion: fixed, epsilon, global, sensitivity, adv-taylor importance (one-shot, 25% finetune);
- schedule: iterative (3 steps, learning rate restarted after each), during-training
  (pruned at epoch 5 of the dense training, with and without a further 25% finetune);
- finetune budget: 25% and 100% of the dense epochs, and learning-rate rewinding (the
  finetune at the dense training's learning rate);
- robust distillation from the same seed's dense model (25% and 100% finetune);
- the paper's regularizers during the finetune (beta-dispersion, alignment), their weight
  chosen first on the validation split (never the test set);

in the two framings users have: (a) "I already have a robust model" (the dense cost is
sunk; finetune = 25% of the dense epochs) and (b) equal total epochs (dense share included)
against scratch.

Run::

    python benchmarks/run_quality.py               # full: writes benchmarks/results/quality.{md,json}
    python benchmarks/run_quality.py --part cnn    # one model only (cnn or resnet): quality-cnn.{md,json}
    python benchmarks/run_quality.py --quick        # fewer seeds and epochs (printed, not written)
    python benchmarks/run_quality.py --dry-run      # tiny settings, a smoke test (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality_tables  # noqa: E402  (the tables of this benchmark, next to it)


@dataclass(frozen=True)
class Part:
    """One model of the benchmark and its budget."""

    name: str
    model: dict[str, Any]
    data: dict[str, Any]
    seeds: tuple[int, ...]
    dense_epochs: int
    steps: int  # PGD steps of the training attacks
    targets: tuple[float, ...]
    entries: tuple[str, ...]  # which entries of ENTRIES run
    early: int  # the during-training pruning epoch
    #: the targets of the schedule, budget, distillation and regularizer entries (the criteria
    #: run at every target); the aims are stated at 25% and 10%
    focus: tuple[float, ...] = (0.25, 0.1)


@dataclass(frozen=True)
class Settings:
    parts: tuple[Part, ...]
    eps: float = 0.2
    n_iter: int = 100
    n_examples: int | None = None  # all 360 test digits
    validation: float = 0.1
    reg_weights: tuple[tuple[str, tuple[float, ...]], ...] = (("beta", (1.0, 10.0, 30.0)), ("alignment", (0.1, 1.0, 3.0)))
    select_target: float = 0.25

    @property
    def short(self) -> float:
        return 0.25  # the finetune budget of framing (a), a fraction of the dense epochs


ALL_ENTRIES = ("fixed", "epsilon", "global", "sensitivity", "adv-taylor", "iterative", "distill", "beta",
               "alignment", "lr-rewind", "fixed-long", "distill-long", "early", "early+ft",
               "scratch", "scratch-long", "scratch-early")
#: resnet18-cifar costs ~60x cnn-small per example and its dense APGD-T evaluation alone about 12
#: minutes on one core, so it runs the default, the best finetune and schedule of the pilots
#: and the scratch bar, at one target
RESNET_ENTRIES = ("fixed", "lr-rewind", "early", "scratch")

CNN = Part("cnn-small", {"name": "cnn-small", "widths": [16, 32, 64]}, {"name": "digits", "batch_size": 64},
           (0, 1, 2, 3, 4), 20, 5, (0.5, 0.25, 0.1), ALL_ENTRIES, 5)
RESNET = Part("resnet18-cifar", {"name": "resnet18-cifar", "width": 16},
              {"name": "digits", "batch_size": 64, "size": 32}, (0, 1, 2, 3, 4), 8, 2, (0.25,),
              RESNET_ENTRIES, 2)
FULL = Settings((CNN, RESNET))
QUICK = Settings((replace(CNN, seeds=(0, 1), dense_epochs=10, early=3), replace(RESNET, seeds=(0, 1), dense_epochs=4)),
                 n_examples=200, reg_weights=(("beta", (10.0,)), ("alignment", (1.0,))))
DRY = Settings(
    (replace(CNN, model={"name": "cnn-small", "widths": [4, 8]}, seeds=(0, 1), dense_epochs=2, steps=1,
             targets=(0.5,), early=1),
     replace(RESNET, model={"name": "resnet18-cifar", "width": 4}, data={"name": "digits", "batch_size": 128,
             "size": 16}, seeds=(0,), dense_epochs=1, steps=1, targets=(0.5,), entries=("fixed", "scratch"), early=0)),
    n_iter=3, n_examples=16, reg_weights=(("beta", (1.0, 10.0)), ("alignment", (1.0,))),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 seeds, shorter training (printed only unless --out)")
    mode.add_argument("--dry-run", action="store_true", help="tiny settings: checks the script runs")
    parser.add_argument("--part", default="cnn,resnet", help="comma-separated: cnn, resnet")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one seed each at a time)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results for a full run)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the recipe runs are written")
    args = parser.parse_args(argv)
    s = DRY if args.dry_run else QUICK if args.quick else FULL
    label = "dry-run" if args.dry_run else "quick" if args.quick else "full"
    wanted = {p.strip() for p in args.part.split(",") if p.strip()}
    parts = [p for p in s.parts if {"cnn": "cnn-small", "resnet": "resnet18-cifar"}.get(p.name, p.name) in
             {{"cnn": "cnn-small", "resnet": "resnet18-cifar"}.get(w, w) for w in wanted}]
    out = args.out or (HERE / "results" if label == "full" else None)
    started = time.perf_counter()
    payload: dict[str, Any] = {"mode": label, "settings": asdict(s), "parts": {}}
    sections = []
    for part in parts:
        t0 = time.perf_counter()
        weights, selection = select_weights(part, s, args)
        tasks = [(part_recipe(part, s, weights, seed, f"quality-{part.name}-s{seed}"), str(args.runs), not args.dry_run)
                 for seed in part.seeds]
        rows = run_all(tasks, args.jobs)
        minutes = (time.perf_counter() - t0) / 60
        payload["parts"][part.name] = {"rows": [quality_tables.compact(r) for r in rows], "weights": weights,
                                       "selection": selection, "minutes": minutes}
        sections.append(quality_tables.part_markdown(part, s, rows, weights, selection, minutes))
    elapsed = (time.perf_counter() - started) / 60
    command = "python benchmarks/run_quality.py" + {"quick": " --quick", "dry-run": " --dry-run"}.get(label, "")
    if wanted != {"cnn", "resnet"}:
        command += f" --part {args.part}"
    text = quality_tables.header(s, label, command, elapsed, args.jobs) + "\n" + "\n".join(sections)
    print(text)
    if out is not None:
        # one part alone writes its own files (quality-cnn.md, quality-resnet.md), so that the
        # parts can be run (and rerun) one at a time without overwriting each other
        stem = "quality" if wanted == {"cnn", "resnet"} else "quality-" + "-".join(sorted(wanted))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.md").write_text(text, encoding="utf-8")
        (out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------- recipes


def entries(part: Part, s: Settings, weights: dict[str, float]) -> list[dict[str, Any]]:
    """The [[prune]] entries of a part (those named in ``part.entries``, in this order)."""
    short = max(1, round(s.short * part.dense_epochs))
    long_ft = {"epochs": part.dense_epochs}
    kd = {"weight": 0.5, "temperature": 2.0}
    every = list(part.targets)
    targets = [t for t in every if t in part.focus] or every
    crit = {"target_macs": every, "reference": "fixed", "scratch": "scratch"}
    one = {"target_macs": targets, "reference": "fixed", "scratch": "scratch"}
    long = {"target_macs": targets, "reference": "fixed-long", "scratch": "scratch-long"}
    table: dict[str, dict[str, Any]] = {
        "fixed": {"method": "fixed", **crit},
        "epsilon": {"method": "epsilon", **crit},
        "global": {"method": "global", **crit},
        "sensitivity": {"method": "sensitivity", **crit},
        "adv-taylor": {"method": "fixed", "importance": "adv-taylor", **crit},
        "iterative": {"method": "fixed", "schedule": {"kind": "iterative", "steps": min(3, short), "restart": True}, **one},
        "distill": {"method": "fixed", "finetune": {"distill": kd}, **one},
        "beta": {"method": "fixed", "regularizers": [{"kind": "beta", "weight": weights.get("beta", 0.0), "top": 0.05}], **one},
        "alignment": {"method": "fixed", "regularizers": [{"kind": "alignment", "weight": weights.get("alignment", 0.0)}], **one},
        "lr-rewind": {"method": "fixed", "finetune": {"lr": 0.05}, **one},
        "fixed-long": {"method": "fixed", "finetune": long_ft, **long},
        "distill-long": {"method": "fixed", "finetune": {**long_ft, "distill": kd}, **long},
        "early": {"method": "fixed", "schedule": {"kind": "during-training", "at": part.early},
                  "finetune": {"epochs": 0}, "target_macs": targets, "reference": "fixed", "scratch": "scratch-early"},
        "early+ft": {"method": "fixed", "schedule": {"kind": "during-training", "at": part.early},
                     "target_macs": targets, "reference": "fixed", "scratch": "scratch"},
        "scratch": {"method": "scratch", "match": "fixed"},
        "scratch-long": {"method": "scratch", "match": "fixed-long"},
        "scratch-early": {"method": "scratch", "match": "early"},
    }
    out = []
    for name in part.entries:
        entry = {"label": name, **table[name]}
        for key in ("reference", "scratch"):
            if entry.get(key) not in part.entries:
                entry.pop(key, None)
        if entry.get("match") not in (None, *part.entries):
            continue
        out.append(entry)
    return out


def part_recipe(part: Part, s: Settings, weights: dict[str, float], seed: int, name: str,
                entry_list: list[dict[str, Any]] | None = None, split: str = "test") -> dict[str, Any]:
    adv = {"kind": "pgd", "norm": "Linf", "eps": s.eps, "steps": part.steps}
    short = max(1, round(s.short * part.dense_epochs))
    return {
        "name": name,
        "seeds": [seed],
        "data": {**part.data, "validation": s.validation},
        "model": dict(part.model),
        "train": {"epochs": part.dense_epochs, "lr": 0.05, "adversarial": adv},
        "prune": entry_list if entry_list is not None else entries(part, s, weights),
        "finetune": {"epochs": short, "lr": 0.01, "adversarial": adv},
        "eval": {"norm": "Linf", "eps": s.eps, "attacks": ["apgd-ce", "apgd-t"], "n_iter": s.n_iter,
                 "latency": False, "split": split, **({} if s.n_examples is None else {"n_examples": s.n_examples})},
    }


def select_weights(part: Part, s: Settings, args: argparse.Namespace) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each regularizer's weight, chosen on the validation split (first seed, one target,
    the 25% finetune): the weight with the highest validation robust accuracy (ties: the
    smaller weight). Regularizers the part does not run are skipped."""
    kinds = [(k, ws) for k, ws in s.reg_weights if k in part.entries]
    if not kinds:
        return {}, []
    trial = []
    for kind, ws in kinds:
        for w in ws:
            reg = {"kind": kind, "weight": w, **({"top": 0.05} if kind == "beta" else {})}
            trial.append({"method": "fixed", "label": f"{kind}={w:g}", "target_macs": [s.select_target], "regularizers": [reg]})
    trial.append({"method": "fixed", "label": "none", "target_macs": [s.select_target]})
    raw = part_recipe(part, s, {}, part.seeds[0], f"quality-{part.name}-select", entry_list=trial, split="val")
    rows = run_all([(raw, str(args.runs), not args.dry_run)], 1)
    by_label = {r["label"]: r for r in rows}
    chosen, table = {}, []
    for kind, ws in kinds:
        scores = [(by_label[f"{kind}={w:g}"]["robust_accuracy"], -w, w) for w in ws]
        best = max(scores)[2]
        chosen[kind] = best
        table += [{"kind": kind, "weight": w, "val_robust": r, "val_clean": by_label[f"{kind}={w:g}"]["clean_accuracy"],
                   "chosen": w == best} for r, _, w in scores]
    table.append({"kind": "none", "weight": 0.0, "val_robust": by_label["none"]["robust_accuracy"],
                  "val_clean": by_label["none"]["clean_accuracy"], "chosen": False})
    return chosen, table


# --------------------------------------------------------------------------- running


def run_all(tasks: list[tuple[dict[str, Any], str, bool]], jobs: int) -> list[dict[str, Any]]:
    """Run the recipes (one per seed) with ``robustprune run``, at most ``jobs`` at a time,
    each in its own process with one torch thread; every row, in task order."""
    from robustprune.recipe import parse_recipe
    from robustprune.report import read_results

    pending, running, done = list(enumerate(tasks)), [], {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            i, (raw, runs, _progress) = pending.pop(0)
            folder = Path(runs) / raw["name"]
            folder.mkdir(parents=True, exist_ok=True)
            recipe = parse_recipe({**raw, "output": str(runs)}, source=f"benchmarks/run_quality.py:{raw['name']}")
            path = folder / "recipe.toml"
            path.write_text(recipe.to_toml(), encoding="utf-8")
            cmd = [sys.executable, "-m", "robustprune.cli", "run", str(path), "--run-dir", str(folder / "run"),
                   "--threads", "1", "--device", "cpu", "--no-progress"]
            if (folder / "run" / "results.jsonl").is_file():
                cmd.append("--resume")
            log = open(folder / "log.txt", "a", encoding="utf-8")  # noqa: SIM115 (closed when the process ends)
            env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            running.append((i, folder, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        for item in list(running):
            i, folder, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode != 0:
                tail = (folder / "log.txt").read_text(encoding="utf-8")[-2000:]
                raise RuntimeError(f"{folder.name} failed (exit {proc.returncode}):\n{tail}")
            print(f"{folder.name}: {folder / 'run'}", file=sys.stderr, flush=True)
            done[i] = read_results(folder / "run" / "results.jsonl")
        time.sleep(0.5)
    return [row for i in sorted(done) for row in done[i]]


if __name__ == "__main__":
    sys.exit(main())
