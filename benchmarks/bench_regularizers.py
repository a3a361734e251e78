"""Cost of a regularizer: one training step with it versus one step without it.

``resnet18-cifar`` (full width, 11M parameters), a fixed random batch of 128 CIFAR-sized
images, SGD with momentum; a step is ``zero_grad, forward, cross-entropy (+ reg(model)),
backward, optimizer.step``. Every configuration is warmed up once, then the configurations
are timed round-robin, the order reversing every round (so that load from other processes
hits all of them alike), ``--reps`` steps each; the table gives the median step time and its
ratio to the plain step. :func:`measure` returns the rows (``benchmarks/run_speed.py`` calls it).
Target: every ratio at most 1.3x.

    python benchmarks/bench_regularizers.py            # full (writes benchmarks/results/regularizers.md)
    python benchmarks/bench_regularizers.py --quick    # batch 32, 3 reps, printed only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_train import interleave, timed  # noqa: E402

from robustprune._io import atomic_write  # noqa: E402
from robustprune.models import create_model  # noqa: E402
from robustprune.regularizers import (  # noqa: E402
    Alignment,
    BetaDispersion,
    GroupLasso,
    NuclearNorm,
    ScaleInvariantRowSparsity,
)

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.3


def configs() -> dict[str, torch.nn.Module | None]:
    return {
        "none": None,
        "BetaDispersion": BetaDispersion(1e-2),
        "Alignment": Alignment(1e-2),
        "NuclearNorm": NuclearNorm(1e-4),
        "GroupLasso": GroupLasso(1e-4),
        "ScaleInvariantRowSparsity": ScaleInvariantRowSparsity(1e-3),
    }


def train_step(model, opt, reg, x, y) -> None:  # noqa: ANN001
    """One SGD step: ``zero_grad, forward, cross-entropy (+ reg(model)), backward, step``."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    if reg is not None:
        loss = loss + reg(model)
    loss.backward()
    opt.step()


def measure(
    batch_size: int = 128,
    reps: int = 7,
    device: torch.device | str = "cpu",
    *,
    width: int = 64,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, float | str]]:
    """Median step time of every configuration of :func:`configs` on ``resnet18-cifar``
    (``width`` scales it; 64 is the real one) and its ratio to the plain step. ``warmup``
    rounds (also Alignment's first power iterations), then ``reps`` interleaved rounds whose
    order reverses every round. Returns one row per configuration, ``"none"`` first."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model("resnet18-cifar", width=width).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(dev)
    regs = configs()  # they keep their state on the device of the weights

    def side(reg: torch.nn.Module | None) -> Callable[[], float]:
        return lambda: timed(lambda: train_step(model, opt, reg, x, y), dev)[0]

    times = interleave({name: side(reg) for name, reg in regs.items()}, reps, warmup=warmup, log=log)
    base = statistics.median(times["none"])
    rows = []
    for name, values in times.items():
        med = statistics.median(values)
        rows.append({"regularizer": name, "median_s": med, "ratio": med / base, "min_s": min(values),
                     "max_s": max(values), "runs": values})
    return rows


def render(rows: list[dict[str, float | str]], command: str, env: str) -> str:
    lines = [
        "## Regularizer cost: one training step with vs. without the regularizer",
        "",
        f"`{command}`",
        "",
        env,
        "",
        "| regularizer | median step (s) | min (s) | max (s) | ratio to plain step | ≤ 1.3x |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "—" if r["regularizer"] == "none" else ("yes" if r["ratio"] <= TARGET else "**no**")
        lines.append(
            f"| {r['regularizer']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
            f"{r['ratio']:.3f}x | {ok} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 32, 3 reps, print only")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None, help="timed steps per configuration (default 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="markdown output (default results/regularizers.md)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (32 if args.quick else 128)
    reps = args.reps or (3 if args.quick else 7)
    device = torch.device(args.device)
    rows = measure(batch, reps, device, log=print)
    cpu = platform.processor() or platform.machine()
    env = (
        f"resnet18-cifar, batch {batch}, {reps} timed steps per configuration (median), device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu})."
    )
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    text = render(rows, command, env)
    print(text)
    if not args.quick:
        out = args.out or RESULTS / "regularizers.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text)
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
