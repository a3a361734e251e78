"""Overhead of ``robustprune.attacks.robust_accuracy`` over calling pyautoattack directly.

The same trained model and the same test examples are evaluated with APGD-CE (100
iterations, Linf) two ways, alternating, ``--repeats`` times each:

* direct: ``pyautoattack.autopgd_base.APGDAttack(...).perturb(x, y)`` per batch, then one
  forward pass to count the robust points (the minimum any evaluation needs);
* adapter: ``robust_accuracy(model, (x, y), attacks=("apgd-ce",))``, which adds the clean
  pass, AutoAttack's sanity checks, RNG isolation and the budget check.

The ratio of the medians is the adapter's overhead (target: at most 1.05x); the two must
report the same robust accuracy.

    python benchmarks/bench_eval.py             # full run, printed
    python benchmarks/bench_eval.py --out benchmarks/results/eval.md   # and its section updated there
    python benchmarks/bench_eval.py --quick     # a short run

:func:`measure` returns the measured numbers (``benchmarks/run_speed.py`` calls it).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bench_train import cpu_main, digits_like, interleave, summarize, timed  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from robustprune.attacks import rebatch, robust_accuracy  # noqa: E402
from robustprune.models import create_model  # noqa: E402
from robustprune.train import fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.05


@dataclass(frozen=True)
class EvalSettings:
    """A ``cnn-small`` trained on digits (or ``synthetic`` 8x8 data), then APGD-CE on ``n``
    test images."""

    n: int = 360
    n_iter: int = 100
    widths: tuple[int, ...] = (16, 32)
    train_epochs: int = 4
    n_train: int | None = None  # the first n training images; None: all 1437
    eps: float = 0.05
    batch_size: int = 128
    dataset: str = "digits"  # or "synthetic" where scikit-learn (digits) is not installed


FULL = EvalSettings()
QUICK = EvalSettings(n=128, n_iter=30)
TINY = EvalSettings(n=16, n_iter=5, widths=(4, 8), train_epochs=1, n_train=128)  # smoke tests only


def direct_apgd(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int,
    n_iter: int, seed: int,
) -> float:
    """Robust accuracy from pyautoattack's APGDAttack, called the way its README shows."""
    from pyautoattack.autopgd_base import APGDAttack

    model.eval()
    attack = APGDAttack(model, n_iter=n_iter, norm="Linf", n_restarts=1, eps=eps, seed=seed,
                        loss="ce", device=x.device)
    robust = 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        x_adv = attack.perturb(xb, yb)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == yb).sum())
    return robust / x.shape[0]


def measure(
    settings: EvalSettings = FULL,
    repeats: int = 9,
    device: torch.device | str = "cpu",
    *,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, float | int | str]:
    """Train the model briefly, then time :func:`direct_apgd` and ``robust_accuracy`` on the
    same examples, alternating. Returns the median wall and CPU times of each
    (``direct_wall``, ``direct_cpu``, ``adapter_wall``, ``adapter_cpu``), every run, the
    robust accuracies seen (one value when both agree), the clean accuracy on the ``n``
    examples (both sides attack only the clean-correct ones) and the settings."""
    dev = torch.device(device)
    ds = digits_like(settings.dataset)
    info = ds.info
    train = ds.train if settings.n_train is None else Subset(ds.train, range(settings.n_train))
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = create_model("cnn-small", widths=settings.widths, mean=info.mean, std=info.std)
    fit(model, loader, settings.train_epochs, lr=0.05, amp="off", progress=False, device=dev)
    model.eval()
    test = DataLoader(ds.test, batch_size=128, shuffle=False)
    x, y = next(iter(rebatch(test, settings.n, settings.n)))
    x, y = x.to(dev), y.to(dev)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    eps, batch_size, seed, n_iter = settings.eps, settings.batch_size, 0, settings.n_iter
    rng_devices = [torch.cuda.current_device() if dev.index is None else dev.index] if dev.type == "cuda" else []
    accs: set[float] = set()

    def time_direct() -> tuple[float, float]:
        found: list[float] = []
        with torch.random.fork_rng(devices=rng_devices):  # APGDAttack reseeds the global RNG
            wall, cpu = timed(lambda: found.append(direct_apgd(model, x, y, eps, batch_size, n_iter, seed)), dev)
        accs.add(round(found[0], 10))
        return wall, cpu

    def time_adapter() -> tuple[float, float]:
        found: list[float] = []
        wall, cpu = timed(lambda: found.append(robust_accuracy(
            model, (x, y), eps=eps, attacks=("apgd-ce",), n_iter=n_iter, batch_size=batch_size,
            seed=seed, device=dev, progress=False).robust_accuracy), dev)
        accs.add(round(found[0], 10))
        return wall, cpu

    runs = interleave({"direct": time_direct, "adapter": time_adapter}, repeats, warmup=warmup, log=log)
    return {
        "model": f"cnn-small widths={settings.widths}, trained {settings.train_epochs} epoch(s) on "
                 f"{len(train)} {settings.dataset} images",
        "n": settings.n,
        "clean": clean,
        "n_iter": n_iter,
        "eps": eps,
        "batch_size": batch_size,
        "repeats": repeats,
        "device": str(dev),
        **summarize("direct", runs["direct"]),
        **summarize("adapter", runs["adapter"]),
        "robust": ", ".join(f"{a:.4f}" for a in sorted(accs)),
        "runs": runs,
    }


def to_markdown(r: dict, command: str) -> str:
    ratio_cpu = float(r["adapter_cpu"]) / float(r["direct_cpu"])
    ratio_wall = float(r["adapter_wall"]) / float(r["direct_wall"])
    verdict = "meets" if ratio_cpu <= TARGET else "misses"
    n = int(r["n"])
    return "\n".join([
        "## Robust evaluation: adapter vs direct pyautoattack (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"thread(s), torch {torch.__version__}  ",
        f"Model: {r['model']}; {n} digits test images; APGD-CE, {r['n_iter']} iterations, "
        f"Linf eps={r['eps']}, batch {r['batch_size']}; median of {r['repeats']} alternating "
        "runs after one warm-up each.",
        "",
        "| evaluation | CPU time (s) | wall time (s) | images/s (CPU time) |",
        "|---|---:|---:|---:|",
        f"| direct `APGDAttack.perturb` + counting pass | {float(r['direct_cpu']):.3f} | "
        f"{float(r['direct_wall']):.3f} | {n / float(r['direct_cpu']):.0f} |",
        f"| `robust_accuracy(..., attacks=('apgd-ce',))` | {float(r['adapter_cpu']):.3f} | "
        f"{float(r['adapter_wall']):.3f} | {n / float(r['adapter_cpu']):.0f} |",
        "",
        f"Ratio adapter / direct: **{ratio_cpu:.3f}x** in CPU time ({verdict} the {TARGET:.2f}x "
        f"target), {ratio_wall:.3f}x in wall time (single-threaded; wall time also counts "
        "waiting for cores shared with other jobs). Robust accuracy reported by both: "
        f"{r['robust']} (identical when one value is listed).",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    cpu_main(__doc__, "bench_eval.py", measure, to_markdown, QUICK, FULL, "eval.md", "cpu-adapter-overhead",
             "Evaluation benchmarks", "timed runs per side (>= 5)", argv)


if __name__ == "__main__":
    main()
