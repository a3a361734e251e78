"""Speed and peak memory of ``rp.prune`` against torch-pruning's own ``BasePruner``.

Both sides prune the same random-weight model to the *same per-layer widths*: the ε-plan's
per-group kept counts are handed to ``tp.pruner.BasePruner`` as a ``pruning_ratio_dict``
(group-ℓ2 magnitude importance, classifier head ignored, ``num_heads`` for attention), and the
resulting parameter counts are checked to be identical. Timings alternate the two sides,
each run on a fresh copy of the dense model (copying is not timed), and report medians.
``rp.prune``'s time includes everything it returns: tracing, scoring, pruning and the MACs
count before and after. Peak memory is the peak resident-set growth during one call,
sampled every millisecond in a fresh subprocess per side.

    .venv/bin/python benchmarks/bench_prune.py            # resnet50 + vit_base, median of 5
    .venv/bin/python benchmarks/bench_prune.py --quick    # resnet50 only, median of 3

:func:`measure` returns one row per model (``benchmarks/run_speed.py`` calls it).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from bench_train import interleave, timed  # noqa: E402
from torch import nn  # noqa: E402

import robustprune as rp  # noqa: E402
from robustprune.layers import classifier_head  # noqa: E402
from robustprune.models import create_model  # noqa: E402
from robustprune.pruners import EpsilonPruner  # noqa: E402


@dataclass(frozen=True)
class BenchModel:
    """A model to prune: registry name, its options and the example input shape."""

    name: str
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    kwargs: dict[str, Any] = field(default_factory=dict)


MODELS = {
    "resnet50": BenchModel("torchvision:resnet50"),
    "vit_base": BenchModel("timm:vit_base_patch16_224"),
    "tiny": BenchModel("resnet18-cifar", (1, 3, 32, 32), {"width": 4}),  # smoke tests only
}
TARGET_RATIO = 1.3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet50 only, median of 3")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 5, quick 3)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--eps", type=float, default=0.5, help="ε of the plan whose widths both sides apply")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable on shared CPUs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prune.md")
    parser.add_argument("--worker", choices=["ours", "tp"], help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.worker:
        print(json.dumps(_memory_worker(args.worker, args.model, args.eps)))
        return 0

    repeats = args.repeats or (3 if args.quick else 5)
    models = args.models or (["resnet50"] if args.quick else ["resnet50", "vit_base"])
    rows = measure(models, eps=args.eps, repeats=repeats, memory=True, threads=args.threads,
                   log=lambda m: print(m, file=sys.stderr))
    table = _markdown(rows, args, repeats)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    return 0 if all(r["ratio"] <= TARGET_RATIO for r in rows) else 1


def measure(
    models: Sequence[str] = ("resnet50", "vit_base"),
    *,
    eps: float = 0.5,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    memory: bool = False,
    threads: int = 1,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time ``rp.prune`` and ``BasePruner`` on each model of :data:`MODELS`, alternating,
    each run on a fresh copy of the dense model (copying is not timed), after ``warmup``
    rounds. Returns one row per model: median seconds ``ours`` and ``tp``, their ``ratio``,
    every run, the parameter counts (checked equal on both sides) and, with ``memory=True``,
    the peak RSS growth of each side in a fresh CPU subprocess."""
    rows = []
    for key in models:
        if log is not None:
            log(f"== {key}")
        rows.append(_bench_model(key, eps, repeats, threads, torch.device(device), memory, warmup, log))
    return rows


# --------------------------------------------------------------------------- the two sides


def _setup(key: str, eps: float, device: torch.device | str = "cpu") -> tuple[nn.Module, torch.Tensor, dict[str, float]]:
    spec = MODELS[key]
    model = create_model(spec.name, **spec.kwargs).eval().to(device)
    x = torch.rand(spec.input_shape).to(device)
    plan = EpsilonPruner(eps=eps).plan(model, x)
    # BasePruner keeps floor(n * (1 - ratio)) units: aim half a unit above k for exact widths
    ratios = {g.layers[0]: 1 - (g.kept + 0.5) / g.total for g in plan.groups if g.kept < g.total}
    return model, x, ratios


def _ours(model: nn.Module, x: torch.Tensor, eps: float) -> Callable[[], None]:
    return lambda: rp.prune(model, eps=eps, example_inputs=x)


def _torch_pruning(model: nn.Module, x: torch.Tensor, ratios: dict[str, float]) -> Callable[[], None]:
    def run() -> None:
        attention = [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")]
        pruner = tp.pruner.BasePruner(
            model,
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=2, normalizer=None),
            pruning_ratio=0.0,
            pruning_ratio_dict={model.get_submodule(n): r for n, r in ratios.items()},
            ignored_layers=[classifier_head(model)],
            num_heads={m.qkv: m.num_heads for m in attention},
            in_channel_groups={},
            out_channel_groups={},
            channel_groups={},
        )
        pruner.step()
        for m in attention:  # what a user must do to get a working timm ViT back
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            m.attn_dim = m.num_heads * m.head_dim

    return run


def _bench_model(
    key: str, eps: float, repeats: int, threads: int, device: torch.device, memory: bool,
    warmup: int, log: Callable[[str], None] | None,
) -> dict:
    dense, x, ratios = _setup(key, eps, device)
    pruned: dict[str, nn.Module] = {}

    def side(name: str) -> Callable[[], float]:
        def run() -> float:
            model = copy.deepcopy(dense)
            fn = _ours(model, x, eps) if name == "ours" else _torch_pruning(model, x, ratios)
            gc.collect()
            elapsed = timed(fn, device)[0]
            pruned[name] = model
            return elapsed

        return run

    times = interleave({"ours": side("ours"), "tp": side("tp")}, repeats, warmup=warmup, log=log)
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in pruned.items()}
    for model in pruned.values():
        with torch.no_grad():
            assert model.eval()(x).shape == (1, 10)
    if params["ours"] != params["tp"]:
        raise SystemExit(f"{key}: the two sides pruned to different widths ({params}); not comparable")
    mem = {side: _memory_in_subprocess(side, key, eps, threads) for side in ("ours", "tp")} if memory else {}
    ours, theirs = statistics.median(times["ours"]), statistics.median(times["tp"])
    return {
        "model": MODELS[key].name,
        "groups_pruned": len(ratios),
        "params": (sum(p.numel() for p in dense.parameters()), params["ours"]),
        "ours": ours,
        "tp": theirs,
        "ratio": ours / theirs,
        "mem": mem,
        "times": times,
    }


# --------------------------------------------------------------------------- memory


def _memory_in_subprocess(side: str, key: str, eps: float, threads: int) -> float:
    cmd = [sys.executable, __file__, "--worker", side, "--model", key, "--eps", str(eps), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mib"])


def _memory_worker(side: str, key: str, eps: float) -> dict:
    dense, x, ratios = _setup(key, eps)
    model = copy.deepcopy(dense)
    del dense
    run = _ours(model, x, eps) if side == "ours" else _torch_pruning(model, x, ratios)
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run()
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], _rss())
    return {"peak_rss_mib": (peak[0] - base) / 2**20}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- report


def _markdown(rows: list[dict], args: argparse.Namespace, repeats: int) -> str:
    cmd = "python benchmarks/bench_prune.py" + (" --quick" if args.quick else "")
    extra = [a for a in sys.argv[1:] if a != "--quick"]
    if extra:
        cmd += " " + " ".join(extra)
    lines = [
        "## Pruning speed: `rp.prune` vs torch-pruning `BasePruner` (same per-layer widths)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"torch {torch.__version__} with {args.threads} intra-op thread(s), torch-pruning 1.6.1; "
        f"random weights, input 1x3x224x224, ε = {args.eps}; median of {repeats} alternating runs "
        "after one warm-up round.",
        "",
        "| model | groups pruned | params before → after | `rp.prune` (s) | `BasePruner` (s) | ratio (target ≤ 1.3) "
        "| peak RSS `rp.prune` (MiB) | peak RSS `BasePruner` (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        before, after = r["params"]
        lines.append(
            f"| `{r['model']}` | {r['groups_pruned']} | {before / 1e6:.1f}M → {after / 1e6:.1f}M | {r['ours']:.3f} "
            f"| {r['tp']:.3f} | **{r['ratio']:.2f}x** | {r['mem']['ours']:.0f} | {r['mem']['tp']:.0f} |"
        )
    lines += [
        "",
        "`rp.prune` times include everything in its report: tracing the dependency graph, scoring "
        "every group, pruning, and counting MACs/params before and after (torch-pruning's counter). "
        "`BasePruner` times include graph construction, scoring and pruning only. Peak RSS is the "
        "growth of the resident set during one call, in a fresh process per side.",
        "",
        "Individual runs (s): "
        + "; ".join(
            f"{r['model']}: ours {', '.join(f'{t:.2f}' for t in r['times']['ours'])} / "
            f"tp {', '.join(f'{t:.2f}' for t in r['times']['tp'])}"
            for r in rows
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
