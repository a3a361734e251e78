"""How many CPU threads the CLI and recipe runs should use by default.

Times the work of ``robustprune eval`` (:func:`robustprune.evaluation.evaluate`: the clean
pass over the test set, MACs, batch-1 and batch-64 latency, APGD-CE and APGD-T) on two
models with 1, 2 and all CPU threads, alternating the thread counts so that a change in the
machine's load hits every count alike:

* ``cnn-small`` (widths 16, 32) on the digits test set (8x8 grey images);
* ``resnet18-cifar`` (width 16) on ``synthetic`` 3x32x32 images.

It prints one table (median seconds per evaluation, and the batch-1 latency each thread
count recorded) and the machine's load average before and after; the default rule of
:func:`robustprune._threads.default_threads` (half the CPUs, at most 4, at least 1) is
chosen from it (its docstring gives the reasons).

    python benchmarks/bench_threads.py            # 12 minutes on 2 busy cores (2 threads are the slow ones)
    python benchmarks/bench_threads.py --quick    # a third of that
    python benchmarks/bench_threads.py --out benchmarks/results/threads.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from robustprune._threads import available_cpus, default_threads  # noqa: E402
from robustprune.data import create_loaders  # noqa: E402
from robustprune.evaluation import evaluate  # noqa: E402
from robustprune.models import create_model  # noqa: E402

#: (label, model name, model options, dataset name, dataset options)
MODELS = (
    ("cnn-small on digits", "cnn-small", {"widths": [16, 32]}, "digits", {}),
    ("resnet18-cifar width 16", "resnet18-cifar", {"width": 16}, "synthetic",
     {"shape": (3, 32, 32), "n_train": 64, "n_test": 256}),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, fewer attacked examples")
    parser.add_argument("--repeats", type=int, default=None, help="timed evaluations per thread count (default 3, quick 1)")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE (default: print only)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    n_examples, n_iter = (32, 5) if args.quick else (64, 10)
    counts = sorted({1, 2, available_cpus()})
    load_before = os.getloadavg()
    lines = [
        "| model | " + " | ".join(f"{t} thread(s): s / eval" for t in counts)
        + " | " + " | ".join(f"{t}: batch-1 ms" for t in counts) + " |",
        "|---|" + "---|" * (2 * len(counts)),
    ]
    for label, name, opts, data, data_opts in MODELS:
        seconds, latency = measure(name, opts, data, data_opts, counts, repeats=repeats,
                                   n_examples=n_examples, n_iter=n_iter)
        lines.append(
            f"| {label} | " + " | ".join(f"{statistics.median(seconds[t]):.2f}" for t in counts)
            + " | " + " | ".join(f"{statistics.median(latency[t]):.3f}" for t in counts) + " |"
        )
    load_after = os.getloadavg()
    command = "python benchmarks/bench_threads.py" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    text = "\n".join([
        "# CPU threads: seconds per evaluation at each thread count", "",
        f"Command: `{command}`. A load average above the CPU count means other jobs shared the "
        "machine: the slowdown of extra threads is then mostly waiting for busy cores, which is "
        "the case the default guards against.", "",
        f"`evaluate` (clean pass, MACs, latency, APGD-CE + APGD-T on {n_examples} examples, "
        f"{n_iter} iterations), median of {repeats} run(s) per thread count.",
        "",
        *lines,
        "",
        f"Machine: {platform.processor() or platform.machine()}, {available_cpus()} CPUs, torch "
        f"{torch.__version__}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after. "
        f"Default rule (half the CPUs, at most 4, at least 1): {default_threads()} thread(s) here.",
    ])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


def measure(
    name: str, opts: dict, data: str, data_opts: dict, counts: Sequence[int], *, repeats: int,
    n_examples: int, n_iter: int,
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Seconds per :func:`evaluate` and its batch-1 latency (ms), per thread count."""
    loaders = create_loaders(data, batch_size=128, num_workers=0, **data_opts)
    info = loaders.info
    torch.manual_seed(0)
    model = create_model(name, num_classes=info.num_classes, input_shape=info.input_shape, **opts)
    seconds: dict[int, list[float]] = {t: [] for t in counts}
    latency: dict[int, list[float]] = {t: [] for t in counts}
    before = torch.get_num_threads()
    try:
        for _ in range(repeats):
            for t in counts:  # alternate: a load change hits every thread count alike
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                result = evaluate(model, loaders.test, eps=8 / 255, n_examples=n_examples, n_iter=n_iter,
                                  device="cpu", progress=False)
                seconds[t].append(time.perf_counter() - t0)
                latency[t].append(result.latency_ms["batch1"])
    finally:
        torch.set_num_threads(before)
    return seconds, latency


if __name__ == "__main__":
    raise SystemExit(main())
