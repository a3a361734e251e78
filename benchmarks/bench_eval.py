"""Overhead of ``robustprune.attacks.robust_accuracy`` over calling pyautoattack directly.

The same trained model and the same test examples are evaluated with APGD-CE (100
iterations, Linf) two ways, alternating, ``--repeats`` times each:

* direct: ``pyautoattack.autopgd_base.APGDAttack(...).perturb(x, y)`` per batch, then one
  forward pass to count the robust points (the minimum any evaluation needs);
* adapter: ``robust_accuracy(model, (x, y), attacks=("apgd-ce",))``, which adds the clean
  pass, AutoAttack's sanity checks, RNG isolation and the budget check.

The ratio of the medians is the adapter's overhead (target: at most 1.05x); the two must
report the same robust accuracy.

    python benchmarks/bench_eval.py             # full (writes benchmarks/results/eval.md)
    python benchmarks/bench_eval.py --quick     # a short run, printed only
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bench_train import summarize, timed, write_section  # noqa: E402

from robustprune.attacks import rebatch, robust_accuracy  # noqa: E402
from robustprune.data import create_loaders  # noqa: E402
from robustprune.models import create_model  # noqa: E402
from robustprune.train import fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.05


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


def run(quick: bool, repeats: int) -> dict[str, float | int | str]:
    torch.set_num_threads(1)
    loaders = create_loaders("digits", batch_size=64)
    info = loaders.info
    torch.manual_seed(0)
    model = create_model("cnn-small", widths=(16, 32), mean=info.mean, std=info.std)
    fit(model, loaders, 4, lr=0.05, progress=False, device="cpu")
    model.eval()
    n = 128 if quick else 360
    n_iter = 30 if quick else 100
    eps, batch_size, seed = 0.05, 128, 0
    x, y = next(iter(rebatch(loaders.test, n, n)))

    def time_direct() -> tuple[float, float, float]:
        rng = torch.get_rng_state()
        accs: list[float] = []
        wall, cpu = timed(lambda: accs.append(direct_apgd(model, x, y, eps, batch_size, n_iter, seed)))
        torch.set_rng_state(rng)
        return wall, cpu, accs[0]

    def time_adapter() -> tuple[float, float, float]:
        accs: list[float] = []
        wall, cpu = timed(lambda: accs.append(robust_accuracy(
            model, (x, y), eps=eps, attacks=("apgd-ce",), n_iter=n_iter, batch_size=batch_size,
            seed=seed, device="cpu", progress=False).robust_accuracy))
        return wall, cpu, accs[0]

    time_direct(), time_adapter()  # warm-up
    direct: list[tuple[float, float]] = []
    adapter: list[tuple[float, float]] = []
    accs: set[float] = set()
    for i in range(repeats):  # alternate, swapping the order every round
        order = (time_direct, time_adapter) if i % 2 == 0 else (time_adapter, time_direct)
        for fn in order:
            wall, cpu, acc = fn()
            (direct if fn is time_direct else adapter).append((wall, cpu))
            accs.add(round(acc, 10))
    return {
        "model": "cnn-small widths=(16, 32), trained 4 epochs on digits",
        "n": n,
        "n_iter": n_iter,
        "eps": eps,
        "batch_size": batch_size,
        "repeats": repeats,
        **summarize("direct", direct),
        **summarize("adapter", adapter),
        "robust": ", ".join(f"{a:.4f}" for a in sorted(accs)),
    }


def to_markdown(r: dict[str, float | int | str], command: str) -> str:
    ratio_cpu = float(r["adapter_cpu"]) / float(r["direct_cpu"])
    ratio_wall = float(r["adapter_wall"]) / float(r["direct_wall"])
    verdict = "meets" if ratio_cpu <= TARGET else "misses"
    n = int(r["n"])
    return "\n".join([
        "## Robust evaluation: adapter vs direct pyautoattack (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, 1 torch thread, torch {torch.__version__}  ",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run; results are printed only")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (>= 5)")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 9)
    result = run(args.quick, repeats)
    command = "python benchmarks/bench_eval.py" + (" --quick" if args.quick else "")
    md = to_markdown(result, command)
    print(md)
    if not args.quick:
        write_section(RESULTS / "eval.md", "cpu-adapter-overhead", md, "Evaluation benchmarks")


if __name__ == "__main__":
    main()
