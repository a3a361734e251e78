"""Every time the README and docs quote, measured: each command run with its defaults, timed.

The docs promise times ("~15 s", "18 models in 6 min 4 s", "about half a minute"); this
script runs each of those commands as written (with the repository's venv on ``PATH``, in a
scratch folder that links ``recipes/``, ``examples/`` and ``benchmarks/``, so ``runs/`` and
the committed results stay untouched), measures its wall time and writes one table,
``benchmarks/results/doc_timings.md``: command, where the docs quote it, the quoted time,
the measured time and their ratio. A ratio above ``SLOW`` is marked: fix the quote or the code.

    python benchmarks/doc_timings.py                 # all (about 45 minutes on 2 cores)
    python benchmarks/doc_timings.py --dry-run       # list the commands, run nothing
    python benchmarks/doc_timings.py --only digits-tiny metrics-analyze

``--only`` updates those rows and keeps the others. The one substitution: commands that write
into ``benchmarks/results/`` by default write to the scratch folder instead (``--out``); the
time is the same. Measured times depend on the machine's load; the table records the load
average before and after each command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "doc_timings.md"
LINKED = ("recipes", "examples", "benchmarks")
SLOW = 1.5  # measured / quoted above this: the quote is wrong

METRICS_ANALYZE = (
    "python -c \"import torch, robustprune as rp; from robustprune.models import create_model; "
    "m = create_model('resnet18-cifar', mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26]); "
    "print(rp.analyze(m, example_inputs=torch.rand(1, 3, 32, 32)))\"")
SPEED_EXAMPLE = (
    "python -c \"import sys; sys.path.insert(0, 'benchmarks'); import run_speed; "
    "rows = run_speed.measure_analyze([('resnet18-cifar', {'width': 16})], repeats=5); "
    "print(rows[0]['ratio']); print(run_speed.measure_pruned_latency(width=16, repeats=5)['latency'][64])\"")
CIFAR_SMOKE = (
    "robustprune run recipes/cifar10-resnet18.toml --set data.name=synthetic --set model.width=8 "
    "--set train.epochs=1 --set finetune.epochs=1 --set train.adversarial.steps=2 "
    "--set finetune.adversarial.steps=2 --set eval.n_examples=32 --set eval.n_iter=5 "
    "--set data.num_workers=0")
APB_SMOKE = (
    "robustprune run recipes/cifar10-resnet18-apb.toml --set data.name=synthetic "
    "--set data.n_train=64 --set data.n_test=16 --set data.num_workers=0 --set seeds=[0] "
    "--set model.width=8 --set train.epochs=1 --set finetune.epochs=1 "
    "--set train.adversarial.steps=2 --set finetune.adversarial.steps=2 "
    "--set eval.n_examples=16 --set eval.n_iter=5 --set 'eval.attacks=[\"apgd-ce\"]' "
    "--set eval.latency=false --threads 1 --run-dir runs/apb-smoke")


@dataclass(frozen=True)
class Timed:
    name: str
    command: str  # a bash command line, run in the scratch folder
    quoted: str  # the time as the docs write it
    quoted_s: float  # the same in seconds (the upper end of a range)
    where: str  # the files that quote it


COMMANDS = (
    Timed("digits-cnn", "robustprune run recipes/digits-cnn.toml --threads 1", "6 min 4 s", 364,
          "README.md (make demo), docs/recipes.md"),
    Timed("digits-tiny", "robustprune run recipes/digits-tiny.toml", "~15 s", 15,
          "README.md, docs/recipes.md"),
    Timed("digits-fcn-nnr", "robustprune run recipes/digits-fcn-nnr.toml", "16 models in 103 s", 103,
          "docs/recipes.md"),
    Timed("cifar-smoke", CIFAR_SMOKE, "about 80 s", 80, "README.md, docs/recipes.md"),
    Timed("apb-smoke", APB_SMOKE, "about half a minute (36 s)", 36, "docs/apb.md"),
    Timed("metrics-analyze", METRICS_ANALYZE, "~20 s", 20, "docs/metrics.md"),
    Timed("speed-example", SPEED_EXAMPLE, "about half a minute", 30, "docs/speed.md"),
    Timed("sensitivity", "python benchmarks/bench_sensitivity.py --skip-taylor", "under two minutes", 120,
          "docs/pruning.md"),
    Timed("run-speed-dry-run", "python benchmarks/run_speed.py --dry-run", "seconds", 30, "docs/speed.md"),
    Timed("run-speed-quick", "python benchmarks/run_speed.py --quick", "a few minutes", 300, "docs/speed.md"),
    Timed("run-speed", "python benchmarks/run_speed.py --out speed.md", "about 15 minutes", 900,
          "docs/speed.md"),
)
BY_NAME = {c.name: c for c in COMMANDS}
HEADER = ("| name | command | quoted in | quoted | measured | measured / quoted | verdict | "
          "load before → after | when |")


def scratch_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="doc-timings-"))
    for name in LINKED:
        (d / name).symlink_to(ROOT / name, target_is_directory=True)
    return d


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def measure(cmd: Timed, cwd: Path, timeout: float) -> dict[str, str]:
    """Run ``cmd`` once, its output shown, and return its table row."""
    load0 = os.getloadavg()[0]
    print(f"== {cmd.name}: {cmd.command}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(["bash", "-e", "-c", cmd.command], cwd=cwd, env=environment(),
                            timeout=timeout).returncode
        wall = time.perf_counter() - t0
        measured = f"{wall:.0f} s" + ("" if rc == 0 else f" (failed, exit {rc})")
        ratio = wall / cmd.quoted_s
        verdict = "FAILED" if rc else ("too slow: fix the quote" if ratio > SLOW else "ok")
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t0
        measured, ratio, verdict = f"> {wall:.0f} s (stopped)", wall / cmd.quoted_s, "too slow: fix the quote"
    print(f"== {cmd.name}: {measured} (quoted: {cmd.quoted})", flush=True)
    return {
        "name": f"`{cmd.name}`", "command": f"`{cmd.command}`", "where": cmd.where, "quoted": cmd.quoted,
        "measured": measured, "ratio": f"{ratio:.2f}x", "verdict": verdict,
        "load": f"{load0:.2f} → {os.getloadavg()[0]:.2f}",
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def read_rows(path: Path) -> dict[str, list[str]]:
    """The rows already in the table, by name."""
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def write_table(path: Path, rows: dict[str, list[str]]) -> None:
    ordered = [rows[c.name] for c in COMMANDS if c.name in rows]
    lines = [
        "## Times quoted in the docs, measured",
        "",
        f"`python benchmarks/doc_timings.py` on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; every command with its defaults, in a scratch folder. "
        f"A ratio above {SLOW}x means the quote is wrong.",
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
        *("| " + " | ".join(cells) + " |" for cells in ordered),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), metavar="NAME",
                        help=f"measure only these ({', '.join(BY_NAME)})")
    parser.add_argument("--dry-run", action="store_true", help="list the commands, run nothing")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the table (default: {OUT.relative_to(ROOT)})")
    parser.add_argument("--timeout-factor", type=float, default=4.0,
                        help="stop a command after this many times its quoted time (plus 60 s)")
    args = parser.parse_args(argv)
    chosen = [BY_NAME[n] for n in args.only] if args.only else list(COMMANDS)
    if args.dry_run:
        for c in chosen:
            print(f"{c.name}  (quoted: {c.quoted}; {c.where})\n    {c.command}")
        return 0
    rows = read_rows(args.out)
    cwd = scratch_dir()
    failed = 0
    for c in chosen:
        row = measure(c, cwd, timeout=args.timeout_factor * c.quoted_s + 60)
        rows[c.name] = list(row.values())
        failed += row["verdict"] != "ok"
        write_table(args.out, rows)  # after every command: a stopped run keeps what it measured
    print(f"written to {args.out} (scratch folder {cwd})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
