"""Speed of ``robustprune.train.fit`` against a minimal hand-written PGD-AT loop.

One adversarial training epoch (PGD-10, Linf, random start) of the same model on the same
data, timed side by side: ``fit`` and the hand-written loop alternate, each timed ``--repeats``
times; the ratio of the medians is the overhead of ``fit`` (target: at most 1.10x).

    python benchmarks/bench_train.py            # full run, printed
    python benchmarks/bench_train.py --out benchmarks/results/train.md   # and its section updated there
    python benchmarks/bench_train.py --quick    # a short run

:func:`measure` returns the measured numbers (``benchmarks/run_speed.py`` calls it). This
file also holds the timing helpers the other benchmark scripts share: :func:`timed`,
:func:`interleave`, :func:`summarize` and :func:`write_section`.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from robustprune.attacks import AdversarialConfig  # noqa: E402
from robustprune.data import Datasets, create_datasets  # noqa: E402
from robustprune.models import create_model  # noqa: E402
from robustprune.train import fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.10

T = TypeVar("T")


@dataclass(frozen=True)
class TrainSettings:
    """One PGD-AT epoch of ``cnn-small`` on digits (or ``synthetic`` data of the same size)."""

    widths: tuple[int, ...]
    size: int | None = None  # image side; None keeps digits' native 8x8
    batch: int = 128
    n_train: int | None = None  # the first n training images; None: all 1437
    eps: float = 0.1
    steps: int = 10
    dataset: str = "digits"  # or "synthetic" where scikit-learn (digits) is not installed


FULL = TrainSettings(widths=(32, 64), size=16)
QUICK = TrainSettings(widths=(16, 32))
TINY = TrainSettings(widths=(4, 8), batch=32, n_train=64)  # smoke tests only


# --------------------------------------------------------------------------- shared timing helpers


def timed(fn: Callable[[], object], device: torch.device | str | None = None) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one call of ``fn``; on CUDA the
    device is synchronized before and after, so the wall time covers the queued kernels."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - w0, time.process_time() - c0


def interleave(
    sides: Mapping[str, Callable[[], T]],
    repeats: int,
    *,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
    fmt: Callable[[T], str] | None = None,
) -> dict[str, list[T]]:
    """Call every side ``warmup + repeats`` times, interleaved so that a change of machine
    load hits all sides alike: round ``i`` calls the sides in their order, reversed on odd
    rounds (A B, B A, A B, ...). Returns the results of the ``repeats`` counted rounds per side
    (the first ``warmup`` rounds warm caches, allocators and lazy imports and are dropped).
    ``log`` receives one line per call, the result formatted by ``fmt`` (default: seconds, or
    the (wall, CPU) seconds of :func:`timed`). A side that times something should prepare untimed state itself, e.g.
    ``lambda: timed(make_run())``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out: dict[str, list[T]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(warmup + repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            value = sides[name]()
            if i >= warmup:
                out[name].append(value)
            if log is not None:
                label = "warm-up" if i < warmup else f"run {i - warmup + 1}/{repeats}"
                log(f"  {name} {label}: {(fmt or _fmt_seconds)(value)}")
    return out


def _fmt_seconds(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}s"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"{value[0]:.3f}s wall, {value[1]:.3f}s CPU"
    return str(value)


def summarize(name: str, runs: list[tuple[float, float]]) -> dict[str, float]:
    """Medians of the wall and CPU times of ``runs`` as ``{name}_wall``, ``{name}_cpu``."""
    return {
        f"{name}_wall": statistics.median(w for w, _ in runs),
        f"{name}_cpu": statistics.median(c for _, c in runs),
    }


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


def digits_like(dataset: str, size: int | None = None) -> Datasets:
    """``digits`` (upsampled to ``size`` when given), or ``synthetic`` images of the same
    shape and split sizes (1437 train, 360 test), which need no scikit-learn."""
    if dataset == "digits":
        return create_datasets("digits", **({"size": size} if size else {}))
    if dataset == "synthetic":
        side = size or 8
        return create_datasets("synthetic", shape=(1, side, side), n_train=1437, n_test=360)
    raise ValueError(f"dataset must be 'digits' or 'synthetic', got {dataset!r}")


# --------------------------------------------------------------------------- the two loops


def hand_written_epoch(
    model: nn.Module, loader: torch.utils.data.DataLoader, opt: torch.optim.Optimizer,
    eps: float, steps: int, alpha: float, device: torch.device | str = "cpu",
) -> None:
    """The textbook PGD-AT epoch (Madry et al.): attack in train mode, then one SGD step."""
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
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


def measure(
    settings: TrainSettings = FULL,
    repeats: int = 9,
    device: torch.device | str = "cpu",
    *,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, float | int | str]:
    """One PGD-AT epoch with ``fit`` and with :func:`hand_written_epoch`, alternating, on a
    fresh copy of the same model each time. Returns the median wall and CPU times of each
    (``fit_wall``, ``fit_cpu``, ``hand_wall``, ``hand_cpu``), every run, and the settings.
    Both loops train in fp32 (``fit(amp="off")``) on ``device``; the data stays on the CPU
    and both move each batch to the device."""
    dev = torch.device(device)
    ds = digits_like(settings.dataset, settings.size)
    train = ds.train if settings.n_train is None else Subset(ds.train, range(settings.n_train))
    loader = DataLoader(train, batch_size=settings.batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    info = ds.info
    torch.manual_seed(0)
    base = create_model("cnn-small", widths=settings.widths, input_shape=info.input_shape,
                        mean=info.mean, std=info.std).to(dev)
    eps, steps = settings.eps, settings.steps
    alpha = 2.5 * eps / steps
    adv = AdversarialConfig(kind="pgd", eps=eps, steps=steps)

    def run_fit() -> Callable[[], object]:
        model = copy.deepcopy(base)
        return lambda: fit(model, loader, 1, lr=0.05, adversarial=adv, amp="off",
                           progress=False, device=dev)

    def run_hand() -> Callable[[], object]:
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return lambda: hand_written_epoch(model, loader, opt, eps, steps, alpha, dev)

    runs = interleave({"fit": lambda: timed(run_fit(), dev), "hand": lambda: timed(run_hand(), dev)},
                      repeats, warmup=warmup, log=log)
    size = settings.size or 8
    n = len(train)
    return {
        "model": f"cnn-small widths={settings.widths}",
        "data": f"{settings.dataset} {size}x{size}, {n} train images, batch {settings.batch}",
        "n": n,
        "repeats": repeats,
        "device": str(dev),
        **summarize("fit", runs["fit"]),
        **summarize("hand", runs["hand"]),
        "runs": runs,
    }


# --------------------------------------------------------------------------- report


def to_markdown(r: dict, command: str) -> str:
    ratio_cpu = float(r["fit_cpu"]) / float(r["hand_cpu"])
    ratio_wall = float(r["fit_wall"]) / float(r["hand_wall"])
    verdict = "meets" if ratio_cpu <= TARGET else "misses"
    n = int(r["n"])
    return "\n".join([
        "## PGD-AT epoch: `fit` vs a hand-written loop (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"thread(s), torch {torch.__version__}  ",
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


def cpu_main(
    doc: str, script: str, measure_fn: Any, to_markdown_fn: Any, quick: Any, full: Any,
    results_file: str, section: str, title: str, repeats_help: str, argv: list[str] | None = None,
) -> None:
    """The command line shared by the single-benchmark CPU scripts: a full or ``--quick`` run,
    printed; with ``--out FILE`` its markdown also replaces ``section`` of FILE (the committed
    results are ``benchmarks/results/<results_file>``: nothing is written there by default)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--repeats", type=int, default=None, help=repeats_help)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"also write the result into this markdown file (its '{section}' section), "
                             f"e.g. benchmarks/results/{results_file}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = args.repeats or (5 if args.quick else 9)
    result = measure_fn(quick if args.quick else full, repeats, "cpu")
    command = f"python benchmarks/{script}" + (" --quick" if args.quick else "")
    md = to_markdown_fn(result, command)
    print(md)
    if args.out is not None:
        write_section(args.out, section, md, title)
        print(f"written to {args.out}")


def main(argv: list[str] | None = None) -> None:
    cpu_main(__doc__, "bench_train.py", measure, to_markdown, QUICK, FULL, "train.md", "cpu-pgd-at",
             "Training benchmarks", "timed runs per loop (>= 5)", argv)


if __name__ == "__main__":
    main()
