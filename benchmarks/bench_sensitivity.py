"""Cost of robustness-aware pruning on one CPU thread: ``method="sensitivity"`` and the
``adv-taylor`` importance on resnet18-cifar (random weights, synthetic 32x32 data).

The sensitivity pruner must stay within a 120 s budget for resnet18-cifar (width 64) with its
defaults (``n_examples=128``, ``widths=(0.75, 0.5, 0.25, 0.1)``) and a PGD-10 Linf 8/255
attack. The script prunes a fresh model to ``target_macs`` and prints the measurement's
seconds (``sensitivity_seconds`` of the report), the whole call's seconds and their ratio to
the budget; then the cost of a whole ε-prune to the same target with the adv-taylor
importance and of its ``prepare`` step (``n_batches`` attacked batches of ``batch_size``).

    .venv/bin/python benchmarks/bench_sensitivity.py                # resnet18-cifar, width 64
    .venv/bin/python benchmarks/bench_sensitivity.py --skip-taylor  # the sensitivity call only
    .venv/bin/python benchmarks/bench_sensitivity.py --dry-run      # width 8, tiny data: seconds

The full run takes several minutes on one core, most of it the adv-taylor part (a whole
ε-prune with attacked batches); ``--skip-taylor`` times the sensitivity call alone, about
80 s here (``benchmarks/results/doc_timings.md``, the ``sensitivity`` row).

Exit status 1 when the sensitivity call exceeds the budget.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import robustprune as rp  # noqa: E402
from robustprune.attacks import AdversarialConfig  # noqa: E402
from robustprune.data import create_loaders  # noqa: E402
from robustprune.models import create_model  # noqa: E402
from robustprune.pruners import AdvTaylorImportance, SensitivityPruner  # noqa: E402

BUDGET_S = 120.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="width 8, 8 examples, PGD-2: a few seconds")
    parser.add_argument("--width", type=int, default=64, help="resnet18-cifar width (default 64)")
    parser.add_argument("--n-examples", type=int, default=None, help="sensitivity examples (default: the pruner's)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--target-macs", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=128, help="adv-taylor batch size (default 128)")
    parser.add_argument("--n-batches", type=int, default=4, help="adv-taylor batches (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--skip-taylor", action="store_true", help="only time the sensitivity pruner")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.width, args.steps, args.batch_size, args.n_batches = 8, 2, 8, 1
        args.n_examples = args.n_examples or 8
    torch.set_num_threads(args.threads)
    result = measure(args)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if args.dry_run or result["sensitivity"]["seconds"] <= BUDGET_S else 1


def measure(args: argparse.Namespace) -> dict:
    """Time both robustness-aware paths; one dict of seconds, settings and MACs kept."""
    torch.manual_seed(0)
    adv = AdversarialConfig(kind="pgd", norm="Linf", eps=args.eps, steps=args.steps)
    n_test = args.n_examples or inspect.signature(SensitivityPruner).parameters["n_examples"].default
    loaders = create_loaders("synthetic", batch_size=args.batch_size, n_train=args.batch_size * args.n_batches,
                             n_test=n_test)
    out: dict = {
        "model": f"resnet18-cifar(width={args.width})", "threads": torch.get_num_threads(),
        "attack": f"pgd-{args.steps} Linf eps={args.eps:.4g}", "target_macs": args.target_macs,
        "machine": platform.processor() or platform.machine(), "budget_s": BUDGET_S,
    }
    options = {} if args.n_examples is None else {"n_examples": args.n_examples}
    model = create_model("resnet18-cifar", width=args.width).eval()
    start = time.perf_counter()
    report = rp.prune(model, method="sensitivity", target_macs=args.target_macs, data=loaders.test,
                      adversarial=adv, **options)
    total = time.perf_counter() - start
    s = report.setting
    out["sensitivity"] = {
        "seconds": round(total, 2), "measurement_seconds": s["sensitivity_seconds"],
        "loss_evaluations": s["loss_evaluations"], "examples": s["sensitivity_examples"],
        "ratio_to_budget": round(total / BUDGET_S, 3), "macs_kept": round(report.macs_kept, 4),
    }
    print(report, file=sys.stderr)
    if not args.skip_taylor:
        out["adv_taylor"] = _adv_taylor(args, loaders.train, adv)
    return out


def _adv_taylor(args: argparse.Namespace, data, adv: AdversarialConfig) -> dict:
    importance = AdvTaylorImportance(data, adv, n_batches=args.n_batches)
    model = create_model("resnet18-cifar", width=args.width).eval()
    start = time.perf_counter()
    report = rp.prune(model, target_macs=args.target_macs, importance=importance)
    total = time.perf_counter() - start
    return {
        "prepare_seconds": report.setting["importance_seconds"], "prune_seconds": round(total, 2),
        "batches": args.n_batches, "batch_size": args.batch_size,
        "ratio_to_budget": round(total / BUDGET_S, 3), "macs_kept": round(report.macs_kept, 4),
    }


if __name__ == "__main__":
    raise SystemExit(main())
