"""Speed of ``robustprune.train.fit`` against a minimal hand-written PGD-AT loop.

One adversarial training epoch (PGD-10, Linf, random start) of the same model on the same
data, timed side by side: ``fit`` and the hand-written loop alternate, each timed ``--repeats``
times; the ratio of the medians is the overhead of ``fit`` (target: at most 1.10x).

    python benchmarks/bench_train.py            # full (writes benchmarks/results/train.md)
    python benchmarks/bench_train.py --quick    # a short run, printed only
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from robustprune.attacks import AdversarialConfig  # noqa: E402
from robustprune.data import create_loaders  # noqa: E402
from robustprune.models import create_model  # noqa: E402
from robustprune.train import fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.10


def hand_written_epoch(
    model: nn.Module, loader: torch.utils.data.DataLoader, opt: torch.optim.Optimizer,
    eps: float, steps: int, alpha: float,
) -> None:
    """The textbook PGD-AT epoch (Madry et al.): attack in train mode, then one SGD step."""
    model.train()
    for x, y in loader:
        delta = (torch.rand_like(x) * 2 - 1) * eps
        x_adv = (x + delta).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run(quick: bool, repeats: int) -> dict[str, float | int | str]:
    torch.set_num_threads(1)
    size, widths, batch = (8, (16, 32), 128) if quick else (16, (32, 64), 128)
    loaders = create_loaders("digits", batch_size=batch, size=size if size != 8 else None)
    info = loaders.info
    base = create_model("cnn-small", widths=widths, input_shape=info.input_shape,
                        mean=info.mean, std=info.std)
    eps, steps = 0.1, 10
    alpha = 2.5 * eps / steps
    adv = AdversarialConfig(kind="pgd", eps=eps, steps=steps)

    def time_fit() -> tuple[float, float]:
        model = copy.deepcopy(base)
        return timed(lambda: fit(model, loaders.train, 1, lr=0.05, adversarial=adv,
                                 progress=False, device="cpu"))

    def time_hand() -> tuple[float, float]:
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return timed(lambda: hand_written_epoch(model, loaders.train, opt, eps, steps, alpha))

    time_fit(), time_hand()  # warm-up: imports, allocator, first-call overheads
    ours: list[tuple[float, float]] = []
    hand: list[tuple[float, float]] = []
    for i in range(repeats):  # alternate, swapping the order every round
        if i % 2 == 0:
            ours.append(time_fit())
            hand.append(time_hand())
        else:
            hand.append(time_hand())
            ours.append(time_fit())
    n = len(loaders.train.dataset)
    return {
        "model": f"cnn-small widths={widths}",
        "data": f"digits {size}x{size}, {n} train images, batch {batch}",
        "n": n,
        "repeats": repeats,
        **summarize("fit", ours),
        **summarize("hand", hand),
    }


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one call of ``fn``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def summarize(name: str, runs: list[tuple[float, float]]) -> dict[str, float]:
    return {
        f"{name}_wall": statistics.median(w for w, _ in runs),
        f"{name}_cpu": statistics.median(c for _, c in runs),
    }


def to_markdown(r: dict[str, float | int | str], command: str) -> str:
    ratio_cpu = float(r["fit_cpu"]) / float(r["hand_cpu"])
    ratio_wall = float(r["fit_wall"]) / float(r["hand_wall"])
    verdict = "meets" if ratio_cpu <= TARGET else "misses"
    n = int(r["n"])
    return "\n".join([
        "## PGD-AT epoch: `fit` vs a hand-written loop (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, 1 torch thread, torch {torch.__version__}  ",
        f"Model: {r['model']}; data: {r['data']}; PGD-10 Linf eps=0.1, random start; median of "
        f"{r['repeats']} alternating runs after one warm-up each.",
        "",
        "| loop | CPU time (s) | wall time (s) | images/s (CPU time) |",
        "|---|---:|---:|---:|",
        f"| hand-written PGD-AT loop | {float(r['hand_cpu']):.3f} | {float(r['hand_wall']):.3f} | "
        f"{n / float(r['hand_cpu']):.0f} |",
        f"| `robustprune.train.fit` | {float(r['fit_cpu']):.3f} | {float(r['fit_wall']):.3f} | "
        f"{n / float(r['fit_cpu']):.0f} |",
        "",
        f"Ratio fit / hand-written: **{ratio_cpu:.3f}x** in CPU time ({verdict} the {TARGET:.2f}x "
        f"target), {ratio_wall:.3f}x in wall time. Both loops run single-threaded in one process, "
        "so the process's CPU time is the work done; wall time also counts waiting for the "
        "cores, which other jobs shared during this run. fit also builds timm's optimizer and "
        "scheduler, steps the schedule per update, checks the loss for NaN and keeps running "
        "metrics.",
        "",
    ])


def write_section(path: Path, key: str, markdown: str, title: str) -> None:
    """Replace (or append) the block between ``<!-- begin:key -->`` and ``<!-- end:key -->``."""
    begin, end = f"<!-- begin:{key} -->", f"<!-- end:{key} -->"
    text = path.read_text() if path.exists() else f"# {title}\n\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run; results are printed only")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per loop (>= 5)")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 9)
    result = run(args.quick, repeats)
    command = "python benchmarks/bench_train.py" + (" --quick" if args.quick else "")
    md = to_markdown(result, command)
    print(md)
    if not args.quick:
        write_section(RESULTS / "train.md", "cpu-pgd-at", md, "Training benchmarks")


if __name__ == "__main__":
    main()
