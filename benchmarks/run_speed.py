"""All speed benchmarks of robustprune in one run and one table; every ratio measured side by side.

Each measurement times our code and its reference in the same process, interleaved (A B,
B A, A B, ... after a warm-up round, so that a change of machine load hits both alike), and
reports the ratio of the medians. Ids (for ``--only``), ours vs reference, target:

- ``prune``: ``rp.prune(model, eps=0.5, example_inputs=x)`` vs torch-pruning's ``BasePruner``
  pruning to the same per-layer widths; at most 1.3x.
- ``analyze``: ``analyze(model, example_inputs=x)`` (default options, no data) vs the floor of
  one float64 ``svdvals`` per matricized weight; at most 3x.
- ``regularizers``: a training step plus each regularizer vs the plain step; at most 1.3x each.
- ``train``: one PGD-10 adversarial-training epoch with ``fit`` vs a hand-written loop; at most 1.10x.
- ``eval``: ``robust_accuracy`` with APGD-CE vs pyautoattack's ``APGDAttack.perturb``; at most 1.05x.
- ``latency``: ``resnet18-cifar`` pruned to 50% of its MACs (ε-pruning; fixed ratio for
  comparison) vs dense, eval forward at batch 1 and 64; speedup at least 1.5x at batch 64.

The implementations live in ``bench_prune.py``, ``bench_regularizers.py``, ``bench_train.py``
and ``bench_eval.py`` (their ``measure`` functions); ``analyze`` and ``latency`` are measured
here (:func:`measure_analyze`, :func:`measure_pruned_latency`). ::

    python benchmarks/run_speed.py                  # full CPU run -> benchmarks/results/speed.md
    python benchmarks/run_speed.py --quick          # a few minutes; printed only (or --out)
    python benchmarks/run_speed.py --dry-run        # seconds, tiny models: checks the script runs
    python benchmarks/run_speed.py --device cuda    # the same on a GPU -> results/speed-cuda.md
    python benchmarks/run_speed.py --only analyze latency

On CUDA every measurement runs on the GPU, with ``torch.cuda.synchronize`` around each timed
call. Needs only torch, torchvision, timm, torch-pruning and pyautoattack next to this checkout
(without scikit-learn, the digits data is replaced by ``synthetic`` data of the same shape).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_eval  # noqa: E402
import bench_prune  # noqa: E402
import bench_regularizers  # noqa: E402
import bench_train  # noqa: E402
import torch  # noqa: E402
from bench_train import interleave, timed  # noqa: E402

import robustprune as rp  # noqa: E402
from robustprune.analysis import analyze  # noqa: E402
from robustprune.evaluation import count_macs_params, latency_batches, measure_latency  # noqa: E402
from robustprune.layers import matricize, prunable_layers  # noqa: E402
from robustprune.models import create_model, model_spec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MEASUREMENTS = ("prune", "analyze", "regularizers", "train", "eval", "latency")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Sizes:
    """How big and how often: one instance per mode (full, quick, dry run)."""

    repeats: int  # timed rounds per measurement (the median is over these)
    warmup: int  # untimed rounds before them
    prune_models: tuple[str, ...]  # keys of bench_prune.MODELS
    analyze_models: tuple[tuple[str, Mapping[str, Any]], ...]  # (registry name, options)
    regularizer_batch: int
    regularizer_width: int
    train: bench_train.TrainSettings
    eval: bench_eval.EvalSettings
    latency_width: int
    latency_runs: int  # warm forward passes per latency sample (their median is the sample)
    prune_eps: float = 0.5
    # narrow variants whose analyze ratio is reported for information (no target): their
    # SVDs are tiny, so the power iterations of the alignment dominate
    analyze_narrow: tuple[tuple[str, Mapping[str, Any]], ...] = ()


#: the narrow widths of resnet18-cifar whose analyze ratio is measured (64, the standard
#: width, is among the analyze models)
NARROW_RESNETS = tuple(("resnet18-cifar", {"width": w}) for w in (8, 16, 32))

FULL = Sizes(
    repeats=7, warmup=1, prune_models=("resnet50", "vit_base"),
    analyze_models=(("resnet18-cifar", {}), ("vgg16-cifar", {})),
    regularizer_batch=128, regularizer_width=64, train=bench_train.FULL, eval=bench_eval.FULL,
    latency_width=64, latency_runs=5, analyze_narrow=NARROW_RESNETS,
)
QUICK = Sizes(
    repeats=5, warmup=1, prune_models=("resnet50",), analyze_models=(("resnet18-cifar", {}),),
    regularizer_batch=32, regularizer_width=64, train=bench_train.QUICK, eval=bench_eval.QUICK,
    latency_width=64, latency_runs=3, analyze_narrow=NARROW_RESNETS[:2],
)
DRY_RUN = Sizes(
    repeats=1, warmup=0, prune_models=("tiny",),
    analyze_models=(("resnet18-cifar", {"width": 4}), ("vgg16-cifar", {"width_mult": 1 / 16})),
    regularizer_batch=4, regularizer_width=8, train=bench_train.TINY, eval=bench_eval.TINY,
    latency_width=8, latency_runs=2, analyze_narrow=(("resnet18-cifar", {"width": 2}),),
)


@dataclass(frozen=True)
class Row:
    """One line of the table. ``ratio`` is ``ours / reference`` (lower is better) or, for a
    speedup, ``reference / ours`` (higher is better); ``target`` None means informative only."""

    measurement: str
    ours: float
    reference: float
    unit: str
    ratio: float
    target: float | None
    speedup: bool = False

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.speedup else self.ratio <= self.target


@dataclass(frozen=True)
class Section:
    """The rows of one measurement, its details (markdown lines) and the machine load."""

    id: str
    title: str
    rows: tuple[Row, ...]
    details: tuple[str, ...]
    seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes; printed only unless --out")
    mode.add_argument("--dry-run", action="store_true",
                      help="seconds: tiny models, one round; writes nothing unless --out")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=None,
                        help="run only these measurements (default: all)")
    parser.add_argument("--threads", type=_threads, default="auto",
                        help="torch intra-op threads, or 'auto' (default): every core, unless a "
                        "probe at the start finds them busy with other jobs (more threads slower "
                        "than one), then one")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per measurement (default 7 full, 5 quick)")
    parser.add_argument("--data", choices=["digits", "synthetic"], default=None,
                        help="data of the train/eval measurements (default digits, or synthetic "
                        "when scikit-learn is missing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown output (default for a full run: benchmarks/results/speed.md, "
                        "speed-cuda.md on CUDA)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here; run on a GPU machine "
                     "or use --device cpu.")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1.")
    sizes = DRY_RUN if args.dry_run else QUICK if args.quick else FULL
    if args.repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    data = args.data or ("digits" if importlib.util.find_spec("sklearn") else "synthetic")
    sizes = dataclasses.replace(
        sizes,
        train=dataclasses.replace(sizes.train, dataset=data),
        eval=dataclasses.replace(sizes.eval, dataset=data),
    )
    label = "dry run" if args.dry_run else "quick" if args.quick else "full"
    out = args.out
    if out is None and label == "full":
        out = RESULTS / ("speed.md" if args.device == "cpu" else f"speed-{args.device}.md")

    cores = os.cpu_count() or 1
    requested = cores if args.threads == "auto" else args.threads
    threads_before = torch.get_num_threads()
    try:
        started = datetime.datetime.now(datetime.timezone.utc)
        load_start = os.getloadavg()
        t0 = time.perf_counter()
        probe = thread_probe(requested) if args.device == "cpu" else None
        threads, why = requested, "as asked" if args.threads != "auto" else f"auto: all {cores} cores"
        if args.threads == "auto" and probe is not None and requested > 1 and probe[requested] > probe[1]:
            threads = 1
            why = (f"auto: {requested} threads ran {probe[requested] / probe[1]:.1f}x slower than one "
                   "in the thread probe, the cores being busy with other jobs")
        torch.set_num_threads(threads)
        _log(f"torch threads: {threads} ({why})")
        sections = run(sizes, args.only or MEASUREMENTS, torch.device(args.device), log=_log)
        meta = {
            "command": " ".join(["python benchmarks/run_speed.py", *argv]),
            "mode": label,
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": time.perf_counter() - t0,
            "load_start": load_start,
            "load_end": os.getloadavg(),
            "threads": threads,
            "threads_why": why,
            "device": args.device,
            "data": data,
            "probe": probe,
        }
    finally:
        torch.set_num_threads(threads_before)
    text = render(sections, meta)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        _log(f"written to {out}")
    missed = [r.measurement for s in sections for r in s.rows if r.passed is False]
    return 0 if args.dry_run or not missed else 1


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}")
    return value


def thread_probe(threads: int, reps: int = 15) -> dict[int, float]:
    """Median milliseconds of one fixed convolution (batch 8, 64 -> 64 channels, 3x3, 32x32)
    with ``threads`` torch threads and with one. On an idle machine more threads are faster;
    when other jobs keep the cores busy they can be much slower, as OpenMP threads wait for
    each other. Recorded in the report as a measure of how shared the machine was."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.rand(8, 64, 32, 32, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    out: dict[int, float] = {}
    try:
        for n in dict.fromkeys((threads, 1)):
            torch.set_num_threads(n)
            with torch.no_grad():
                conv(x)
                times = [timed(lambda: conv(x))[0] for _ in range(reps)]
            out[n] = 1000 * statistics.median(times)
    finally:
        torch.set_num_threads(before)
    return out


def run(sizes: Sizes, only: Sequence[str], device: torch.device, *, log: Log | None = None) -> list[Section]:
    """Run the selected measurements in the order of :data:`MEASUREMENTS`."""
    unknown = sorted(set(only) - set(MEASUREMENTS))
    if unknown:
        raise ValueError(f"unknown measurement(s) {unknown}; choose from {MEASUREMENTS}")
    sections = []
    for key in MEASUREMENTS:
        if key not in only:
            continue
        if log is not None:
            log(f"=== {key}")
        load_before, t0 = os.getloadavg(), time.perf_counter()
        title, rows, details = _MEASURE[key](sizes, device, log)
        sections.append(Section(key, title, tuple(rows), tuple(details), time.perf_counter() - t0,
                                load_before, os.getloadavg()))
    return sections


# --------------------------------------------------------------------------- measurements


Measured = tuple[str, list[Row], list[str]]  # title, rows, details


def _prune(sizes: Sizes, device: torch.device, log: Log | None) -> Measured:
    results = bench_prune.measure(sizes.prune_models, eps=sizes.prune_eps, repeats=sizes.repeats,
                                  device=device, warmup=sizes.warmup, log=log)
    rows, details = [], []
    for r in results:
        rows.append(Row(f"`rp.prune` vs torch-pruning `BasePruner`, `{r['model']}`", r["ours"], r["tp"],
                        "s", r["ratio"], bench_prune.TARGET_RATIO))
        before, after = r["params"]
        details.append(
            f"`{r['model']}` (random weights): {r['groups_pruned']} groups pruned, params "
            f"{before:,} → {after:,} on both sides; runs (s): ours {_runs(r['times']['ours'])}, "
            f"BasePruner {_runs(r['times']['tp'])}."
        )
    details.append(
        f"Both sides prune a fresh copy of the model (copying not timed) to the per-layer widths "
        f"of the ε = {sizes.prune_eps} plan; `rp.prune` also traces, scores and counts MACs/params "
        "before and after (its report); `BasePruner` builds its graph, scores and prunes "
        "(group-ℓ2 importance, head ignored). Implementation: `bench_prune.measure`."
    )
    return "Pruning: `rp.prune` vs torch-pruning", rows, details


def measure_analyze(
    models: Sequence[tuple[str, Mapping[str, Any]]],
    repeats: int,
    device: torch.device | str = "cpu",
    *,
    warmup: int = 1,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """``analyze(model, example_inputs=x)`` with its default options and no data, against the
    floor of one ``torch.linalg.svdvals`` per prunable layer's matricized weight.

    The floor is computed in float64, the precision in which ``analyze`` computes its spectra
    (the conversion is not timed); a float32 floor is timed too, for information. Default
    options mean ``norms=("2", "inf")``, ``conv_norm="matricized"``, ``eps=0.05`` and, without
    data, identity-mask alignment of every consecutive pair (ℓ2 by power iteration through
    the composite operator for conv pairs). Returns one dict per model."""
    dev = torch.device(device)
    return [_analyze_one(name, kwargs, repeats, dev, warmup, log) for name, kwargs in models]


def _analyze_one(
    name: str, kwargs: Mapping[str, Any], repeats: int, dev: torch.device, warmup: int, log: Log | None
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval().to(dev)
    spec = model_spec(model)
    assert spec is not None and spec.input_shape is not None
    x = torch.rand((1, *spec.input_shape), generator=torch.Generator().manual_seed(0)).to(dev)
    weights = [matricize(m).detach() for _, m in prunable_layers(model)]
    w64 = [w.to(torch.float64) for w in weights]
    w32 = [w.to(torch.float32) for w in weights]
    if log is not None:
        log(f"== {name} ({len(weights)} prunable layers)")
    runs = interleave(
        {
            "analyze": lambda: timed(lambda: analyze(model, example_inputs=x), dev),
            "svdvals_fp64": lambda: timed(lambda: [torch.linalg.svdvals(w) for w in w64], dev),
            "svdvals_fp32": lambda: timed(lambda: [torch.linalg.svdvals(w) for w in w32], dev),
        },
        repeats, warmup=warmup, log=log,
    )
    med = {side: statistics.median(w for w, _ in values) for side, values in runs.items()}
    shapes = [tuple(w.shape) for w in weights]
    return {
        "model": name + (f" {dict(kwargs)}" if kwargs else ""),
        "layers": len(weights),
        "largest": max(shapes, key=lambda s: s[0] * s[1]),
        "analyze": med["analyze"],
        "floor": med["svdvals_fp64"],
        "floor_fp32": med["svdvals_fp32"],
        "ratio": med["analyze"] / med["svdvals_fp64"],
        "runs": runs,
    }


def _analyze(sizes: Sizes, device: torch.device, log: Log | None) -> Measured:
    models = sizes.analyze_models + sizes.analyze_narrow
    results = measure_analyze(models, sizes.repeats, device, warmup=sizes.warmup, log=log)
    rows, details = [], []
    for i, r in enumerate(results):
        narrow = i >= len(sizes.analyze_models)
        rows.append(Row(f"`analyze()` vs one `svdvals` per weight, `{r['model']}`"
                        + (" (narrow, for information)" if narrow else ""),
                        r["analyze"], r["floor"], "s", r["ratio"], None if narrow else 3.0))
        details.append(
            f"`{r['model']}` (random weights, {r['layers']} prunable layers, largest matricized "
            f"{r['largest'][0]}x{r['largest'][1]}): analyze {_runs(_walls(r['runs']['analyze']))} s; "
            f"float64 floor {_runs(_walls(r['runs']['svdvals_fp64']))} s; float32 floor "
            f"{_runs(_walls(r['runs']['svdvals_fp32']))} s (median {r['floor_fp32']:.3g} s: "
            f"analyze is {r['analyze'] / r['floor_fp32']:.2f}x a float32 floor)."
        )
    details.append(
        "The analyze call is `analyze(model, example_inputs=torch.rand(1, 3, 32, 32))`: default "
        "options (`norms=(\"2\", \"inf\")`, `conv_norm=\"matricized\"`, `eps=0.05`), no data, so "
        "alignment uses identity masks. Besides the one float64 `svdvals` per layer it folds "
        "BatchNorm, traces the graph and measures the ℓ2 alignment of every consecutive conv "
        "pair by power iteration through the composite operator, with the two operator norms "
        "of the pair (to 1e-3 relative), which is most of the remaining time. The floor is "
        "`torch.linalg.svdvals` of every prunable layer's matricized weight in float64, the "
        "precision analyze uses for spectra. Implementation: `run_speed.measure_analyze`."
    )
    if sizes.analyze_narrow:
        details.append(
            "The target is met by the standard models only. The SVDs cost about the cube of the "
            "width, the alignment's power iterations (one conv and one transposed conv per step "
            "and layer) about its square, so the ratio grows as a model narrows: the narrow row "
            "above shows by how much. Use `norms=(\"inf\",)` (no ℓ2 conv alignment) where that "
            "matters."
        )
    return "Analysis: `analyze()` vs the `svdvals` floor", rows, details


def _regularizers(sizes: Sizes, device: torch.device, log: Log | None) -> Measured:
    results = bench_regularizers.measure(sizes.regularizer_batch, sizes.repeats, device,
                                         width=sizes.regularizer_width, warmup=sizes.warmup, log=log)
    base = next(r for r in results if r["regularizer"] == "none")
    rows, details = [], [f"plain step: {_runs(base['runs'])} s."]
    # the target is stated for a batch-128 step; a smaller batch (--quick) makes the
    # regularizer's fixed cost a larger share of the step: reported for information only
    target = bench_regularizers.TARGET if sizes.regularizer_batch >= 128 else None
    for r in results:
        if r["regularizer"] == "none":
            continue
        rows.append(Row(f"training step + `{r['regularizer']}` vs plain step", r["median_s"], base["median_s"],
                        "s", r["ratio"], target))
        details.append(f"{r['regularizer']}: {_runs(r['runs'])} s.")
    width = "" if sizes.regularizer_width == 64 else f" (width {sizes.regularizer_width})"
    details.append(
        f"`resnet18-cifar`{width}, a fixed random batch of {sizes.regularizer_batch} 3x32x32 "
        "images, SGD with momentum; a step is zero_grad, forward, cross-entropy (+ reg(model)), "
        "backward, step. The six configurations are interleaved, the order reversing every "
        "round. Implementation: `bench_regularizers.measure`."
    )
    return "Regularizer cost per training step", rows, details


def _train(sizes: Sizes, device: torch.device, log: Log | None) -> Measured:
    r = bench_train.measure(sizes.train, sizes.repeats, device, warmup=sizes.warmup, log=log)
    ratio_cpu = r["fit_cpu"] / r["hand_cpu"]
    row = Row("PGD-10 AT epoch: `fit` vs hand-written loop", r["fit_wall"], r["hand_wall"], "s",
              r["fit_wall"] / r["hand_wall"], bench_train.TARGET)
    details = [
        f"{r['model']}; {r['data']}; PGD-10 Linf eps={sizes.train.eps}, random start, fp32; each "
        "run trains a fresh copy of the same model for one epoch.",
        f"wall (s): fit {_runs(_walls(r['runs']['fit']))}, hand-written {_runs(_walls(r['runs']['hand']))}; "
        f"process CPU time ratio {ratio_cpu:.3f}x (medians {r['fit_cpu']:.3f} / {r['hand_cpu']:.3f} s).",
        "fit also builds timm's optimizer and scheduler, steps the schedule, checks the loss for "
        "NaN and keeps running metrics. Implementation: `bench_train.measure`.",
    ]
    return "Adversarial training: `fit` vs a hand-written PGD-AT loop", [row], details


def _eval(sizes: Sizes, device: torch.device, log: Log | None) -> Measured:
    r = bench_eval.measure(sizes.eval, sizes.repeats, device, warmup=sizes.warmup, log=log)
    ratio_cpu = r["adapter_cpu"] / r["direct_cpu"]
    row = Row("APGD-CE: `robust_accuracy` adapter vs direct pyautoattack", r["adapter_wall"],
              r["direct_wall"], "s", r["adapter_wall"] / r["direct_wall"], bench_eval.TARGET)
    details = [
        f"{r['model']}; {r['n']} test images (clean accuracy {r['clean']:.3f}; both sides attack "
        f"only the clean-correct ones); APGD-CE, {r['n_iter']} iterations, Linf eps={r['eps']}, "
        f"batch {r['batch_size']}; robust accuracy reported by both: {r['robust']} (one value: "
        "they agree).",
        f"wall (s): adapter {_runs(_walls(r['runs']['adapter']))}, direct {_runs(_walls(r['runs']['direct']))}; "
        f"process CPU time ratio {ratio_cpu:.3f}x.",
        "The adapter adds the clean pass, AutoAttack's sanity checks, RNG isolation and the "
        "budget check. Implementation: `bench_eval.measure`.",
    ]
    return "Robust evaluation: AutoPGD adapter vs pyautoattack", [row], details


def measure_pruned_latency(
    width: int = 64,
    repeats: int = 7,
    device: torch.device | str = "cpu",
    *,
    runs: int = 5,
    warmup: int = 1,
    target_macs: float = 0.5,
    batches: Sequence[int] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Forward latency (eval mode, no grad) of ``resnet18-cifar`` (random weights) dense and
    pruned to ``target_macs`` of its MACs by ``rp.prune(model, target_macs=..., example_inputs=x)``
    with ``method="epsilon"`` and ``method="fixed"``. Per batch size, the three models are
    interleaved ``repeats`` times; each sample is
    :func:`robustprune.evaluation.measure_latency`'s median of ``runs`` warm runs (ms).
    ``batches`` default: :func:`robustprune.evaluation.latency_batches` (1 and 64 on a CPU,
    1, 64 and 256 on CUDA)."""
    dev = torch.device(device)
    batches = tuple(batches) if batches is not None else latency_batches(dev)
    torch.manual_seed(0)
    dense = create_model("resnet18-cifar", width=width).eval().to(dev)
    shape = (3, 32, 32)
    x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(0)).to(dev)
    models = {"dense": dense}
    info: dict[str, dict[str, Any]] = {}
    for method in ("epsilon", "fixed"):
        models[method], wall = _pruned_copy(dense, method, target_macs, x)
        info[method] = {"prune_s": wall}
        if log is not None:
            log(f"  pruned with method={method!r} in {wall:.1f}s")
    for name, model in models.items():
        macs, params = count_macs_params(model, x)
        info.setdefault(name, {}).update(macs=macs, params=params)
    latency: dict[int, dict[str, list[float]]] = {}
    for b in batches:

        def sample(model: torch.nn.Module, b: int = b) -> Callable[[], float]:
            return lambda: measure_latency(model, shape, dev, batches=(b,), warmup=1, runs=runs)[f"batch{b}"]

        if log is not None:
            log(f"== batch {b}")
        latency[b] = interleave({name: sample(m) for name, m in models.items()}, repeats,
                                warmup=warmup, log=log, fmt=lambda ms: f"{ms:.2f} ms")
    return {"width": width, "target_macs": target_macs, "info": info, "latency": latency, "runs": runs,
            "batches": batches}


def _pruned_copy(
    dense: torch.nn.Module, method: str, target_macs: float, x: torch.Tensor
) -> tuple[torch.nn.Module, float]:
    """A copy of ``dense`` pruned by ``rp.prune(..., method=method)``, and the seconds it took."""
    model = copy.deepcopy(dense)
    wall, _ = timed(lambda: rp.prune(model, target_macs=target_macs, example_inputs=x, method=method), x.device)
    return model.eval(), wall


def _latency(sizes: Sizes, device: torch.device, log: Log | None) -> Measured:
    r = measure_pruned_latency(sizes.latency_width, sizes.repeats, device, runs=sizes.latency_runs,
                               warmup=sizes.warmup, log=log)
    rows, details = [], []
    label = {"epsilon": "ε-pruned", "fixed": "fixed-ratio"}
    # the target holds at the largest batch: 64 on a CPU, 256 on CUDA (a GPU is only busy at
    # realistic batches)
    for method in ("epsilon", "fixed"):
        for b in r["batches"]:
            dense = statistics.median(r["latency"][b]["dense"])
            pruned = statistics.median(r["latency"][b][method])
            target = 1.5 if (method == "epsilon" and b == max(r["batches"])) else None
            rows.append(Row(f"latency speedup, batch {b}: {label[method]} to 50% MACs vs dense",
                            pruned, dense, "ms", dense / pruned, target, speedup=True))
    info = r["info"]
    for name in ("dense", "epsilon", "fixed"):
        i = info[name]
        prune = f", pruned in {i['prune_s']:.1f} s" if "prune_s" in i else ""
        samples = "; ".join(f"batch {b}: {_runs(r['latency'][b][name])} ms" for b in r["batches"])
        details.append(f"{name}: {i['macs'] / 1e6:.0f}M MACs, {i['params'] / 1e6:.2f}M params{prune}; {samples}.")
    width = "" if r["width"] == 64 else f" (width {r['width']})"
    details.append(
        f"`resnet18-cifar`{width} with random weights, eval mode, `torch.no_grad`; pruned by "
        f"`rp.prune(model, target_macs={r['target_macs']}, example_inputs=x, method=...)`. Each sample "
        f"is `robustprune.evaluation.measure_latency`'s median of {r['runs']} warm forward passes "
        "(after one more); the three models are interleaved. Latency depends only on the widths, "
        "which random weights give ε-pruning as well (on random weights its per-layer widths are "
        "near-uniform). Implementation: `run_speed.measure_pruned_latency`."
    )
    return "Latency of a pruned `resnet18-cifar` (speedup = dense / pruned)", rows, details


_MEASURE: dict[str, Callable[[Sizes, torch.device, Log | None], Measured]] = {
    "prune": _prune,
    "analyze": _analyze,
    "regularizers": _regularizers,
    "train": _train,
    "eval": _eval,
    "latency": _latency,
}


# --------------------------------------------------------------------------- report


def render(sections: Sequence[Section], meta: Mapping[str, Any]) -> str:
    """The markdown report: one table of every row, then the details of each measurement."""
    lines = [
        "## Speed benchmarks" + (" — DRY RUN, tiny models: numbers are meaningless"
                                           if meta["mode"] == "dry run" else ""),
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; mode: {meta['mode']}; {meta['seconds'] / 60:.1f} minutes.  ",
        f"Machine: {_machine(meta['device'])}.  ",
        f"Software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch-pruning {_version('torch-pruning')}, pyautoattack {_version('pyautoattack')}, "
        f"timm {_version('timm')}.  ",
        f"Threads: {meta['threads']} torch intra-op thread(s) for every measurement "
        f"({meta['threads_why']}), on a machine with {os.cpu_count()} CPUs. Load average (1, 5, 15 min) at the start "
        f"{_load(meta['load_start'])}, at the end {_load(meta['load_end'])}: the machine is shared "
        "with other jobs, so wall times carry their noise; each ratio is taken from interleaved "
        "runs of both sides, which the noise hits alike."
        + ("" if not meta.get("probe") else "  \nThread probe at the start (one 64-channel 3x3 conv, "
           "batch 8, 32x32, median): " + ", ".join(f"{v:.1f} ms with {k} thread(s)" for k, v in meta["probe"].items())
           + "."),
        "",
        "Ratios are medians of ours / reference (lower is better), except latency speedups "
        "(dense / pruned, higher is better).",
        "",
        "| measurement | ours | reference | ratio | target | pass/fail |",
        "|---|---:|---:|---:|---|---|",
    ]
    for s in sections:
        for r in s.rows:
            target = "—" if r.target is None else f"{'≥' if r.speedup else '≤'} {r.target:g}x"
            verdict = {True: "pass", False: "**fail**", None: "info"}[r.passed]
            lines.append(
                f"| {r.measurement} | {_value(r.ours, r.unit)} | {_value(r.reference, r.unit)} | "
                f"{r.ratio:.2f}x{' speedup' if r.speedup else ''} | {target} | {verdict} |"
            )
    lines += ["", "### Details", ""]
    for s in sections:
        lines += [
            f"**{s.title}** (`--only {s.id}`; {s.seconds:.0f} s, load average {_load(s.load_before)} "
            f"→ {_load(s.load_after)})",
            "",
            *[f"- {d}" for d in s.details],
            "",
        ]
    if meta["data"] != "digits":
        lines += [f"The train and eval measurements used `{meta['data']}` data (scikit-learn, which "
                  "holds the digits, is not installed here).", ""]
    return "\n".join(lines).rstrip() + "\n"


def _value(v: float, unit: str) -> str:
    return f"{v:.3g} {unit}" if math.isfinite(v) else "—"


def _runs(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def _walls(runs: Sequence[tuple[float, float]]) -> list[float]:
    return [w for w, _ in runs]


def _load(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        text += f"; GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return text


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
