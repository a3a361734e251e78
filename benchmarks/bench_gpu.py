"""GPU throughput of fit and robust_accuracy, dense and pruned, next to the device's ceiling.

``resnet18-cifar`` on ``synthetic`` 32x32 data (10 classes), on one CUDA device, for the dense
model and the same model ε-pruned to 50% of its MACs (``rp.prune(model, target_macs=0.5)``;
on CUDA the kept widths are multiples of 8):

* the ceiling: TFLOP/s of a large square matmul in bf16, fp32 (TF32 off) and TF32, measured,
  and the datasheet peak of the device where :data:`PEAK_TFLOPS` knows it;
* ``fit`` images/s: standard training and PGD-10 adversarial training, in fp32, with bf16
  autocast, and with bf16 + channels-last + ``torch.compile`` (the fast path; median epoch
  time of ``--epochs`` timed epochs after a warm-up one, which also compiles);
* ``robust_accuracy`` with APGD-CE (100 iterations, Linf 8/255; fp32 as always, eager and
  channels-last): attacked images/s;
* inference latency at batch 256 (``measure_latency``), dense vs pruned.

Every row gives images/s, the estimated model TFLOP/s, the fraction of the measured ceiling
and of the datasheet peak, and for the pruned model its speedup over dense.

Achieved model TFLOP/s are estimates from the forward MACs ``M`` of one image: a training
step costs ``6M`` FLOPs (forward 2M, backward 4M), a PGD/APGD iteration ``4M`` (forward
plus the backward to the input), so a PGD-K step costs ``(4K + 6)M``.

The training data lives on the GPU (an iterable of pre-made batches), so the numbers measure
the training loop, not a CPU DataLoader. ``torch.backends.cudnn.benchmark`` is on.

    python benchmarks/bench_gpu.py              # writes benchmarks/results/gpu.md
    python benchmarks/bench_gpu.py --quick      # a short run, printed only (or --out DIR)
    python benchmarks/bench_gpu.py --dry-run    # every code path on the CPU, tiny (used by the tests)

Needs only torch, torchvision, timm, torch-pruning and pyautoattack next to this checkout.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

#: dense peak TFLOP/s by device name (vendor datasheets, SXM parts): (bf16, tf32, fp32)
PEAK_TFLOPS = {
    "H200": (989.0, 494.0, 67.0),
    "H100": (989.0, 494.0, 67.0),
    "A100": (312.0, 156.0, 19.5),
}


def peak_tflops(device_name: str) -> tuple[float, float, float] | None:
    """The datasheet ``(bf16, tf32, fp32)`` peak of a device by its name (the first entry of
    :data:`PEAK_TFLOPS` named in it: H200 before H100), None for an unknown device."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name.upper():
            return peaks
    return None


class GpuBatches:
    """Shuffled mini-batches of device-resident tensors (an iterable with a length)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator(device=x.device).manual_seed(seed)

    def __len__(self) -> int:
        return (self.x.shape[0] + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.x.shape[0], device=self.x.device, generator=self.generator)
        for start in range(0, self.x.shape[0], self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]


def matmul_tflops(
    dtype: torch.dtype, n: int, device: torch.device, tf32: bool = False, reps: int = 20
) -> float:
    """TFLOP/s of an ``n x n @ n x n`` matmul (2n³ FLOPs), median over ``reps`` runs."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - t0)
        return 2 * n**3 / statistics.median(times) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TrainPath:
    """One way of running the training loop."""

    label: str
    amp: str
    channels_last: bool = False
    compile: bool = False


TRAIN_PATHS = (TrainPath("fp32", "off"), TrainPath("bf16 autocast", "bf16"),
               TrainPath("bf16, channels-last, compiled", "bf16", channels_last=True, compile=True))


@dataclass(frozen=True)
class Row:
    workload: str
    model: str
    path: str
    images_per_s: float
    tflops: float  # estimated model TFLOP/s
    ceiling: float  # the measured matmul ceiling of this precision (TFLOP/s)
    peak: float | None  # the datasheet peak of this precision (TFLOP/s)

    def cells(self, dense: Row | None) -> str:
        speedup = "–" if dense is None else f"{self.images_per_s / dense.images_per_s:.2f}x"
        peak = "–" if self.peak is None else f"{100 * self.tflops / self.peak:.0f}%"
        return (f"| {self.workload} | {self.model} | {self.path} | {self.images_per_s:,.0f} | {self.tflops:.1f} | "
                f"{100 * self.tflops / self.ceiling:.0f}% | {peak} | {speedup} |")


def fit_throughput(model: torch.nn.Module, loader: GpuBatches, epochs: int, adversarial, path: TrainPath,
                   dev: torch.device, smoke: bool) -> float:
    """Training images/s: the median of ``epochs`` timed epochs after a warm-up one."""
    from robustprune.train import fit

    # the CPU smoke test runs the paths' code in fp32 and eager: bf16 convolutions are slow on
    # a CPU, and torch.compile there needs a C++ toolchain
    compile_flag, amp = (False, "off") if smoke else (path.compile, path.amp)
    result = fit(model, loader, epochs + 1, lr=0.05, adversarial=adversarial, amp=amp, device=dev,
                 progress=False, channels_last=path.channels_last, compile=compile_flag)
    return loader.x.shape[0] / statistics.median(h.seconds for h in result.history[1:])


def apgd_throughput(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n_iter: int, reps: int,
                    dev: torch.device, channels_last: bool) -> tuple[float, int]:
    """``(attacked images/s, attacked images)`` of APGD-CE on ``(x, y)``, median of ``reps`` runs."""
    from robustprune.attacks import robust_accuracy

    kw = dict(eps=8 / 255, attacks=("apgd-ce",), device=dev, progress=False, channels_last=channels_last)
    robust_accuracy(model, (x[:64], y[:64]), n_iter=2, **kw)  # warm-up
    times, attacked = [], 0
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        res = robust_accuracy(model, (x, y), n_iter=n_iter, batch_size=512, **kw)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        attacked = round(res.clean_accuracy * res.n)
    return attacked / statistics.median(times), attacked


def pruned_copy(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """``model`` ε-pruned to 50% of its MACs (on CUDA with widths a multiple of 8)."""
    import robustprune as rp

    out = copy.deepcopy(model)
    rp.prune(out, target_macs=0.5, method="epsilon", example_inputs=torch.rand(1, 3, 32, 32, device=dev))
    return out


def render(rows: list[Row], latency: dict[tuple[str, bool], float], *, command: str, device: str,
           macs: dict[str, int], ceiling: dict[str, float], mm_n: int, peak_of: dict[str, float],
           fp32_kind: str, setup: str) -> list[str]:
    """The lines of ``gpu.md``: what ran, the ceilings, one table row per measurement (the
    pruned rows with their speedup over dense on the same path), the batch-256 latency."""
    pruned = "ε-pruned 50%"
    peak_line = ("datasheet peak: " + ", ".join(f"{k} {v:g}" for k, v in peak_of.items()) + " TFLOP/s"
                 if peak_of else "datasheet peak: unknown for this device (see PEAK_TFLOPS)")
    dense_of = {(r.workload, r.path): r for r in rows if r.model == "dense"}
    speedups = "; ".join(
        f"{'channels-last' if cl else 'contiguous'}: dense {latency[('dense', cl)]:.2f} ms, pruned "
        f"{latency[(pruned, cl)]:.2f} ms (**{latency[('dense', cl)] / latency[(pruned, cl)]:.2f}x**)"
        for cl in (False, True))
    return [
        "## GPU throughput (`fit` and `robust_accuracy`, resnet18-cifar dense and ε-pruned, synthetic 32x32)",
        "",
        f"Command: `{command}`  ",
        f"Device: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}; resnet18-cifar "
        f"{macs['dense'] / 1e9:.3f} GMACs/image dense, {macs[pruned] / 1e9:.3f} pruned "
        f"({100 * macs[pruned] / macs['dense']:.0f}%).  ",
        f"Matmul ceiling measured ({mm_n}x{mm_n}): bf16 **{ceiling['bf16']:.0f}**, fp32 (TF32 off) "
        f"**{ceiling['fp32']:.1f}**, TF32 **{ceiling['tf32']:.0f}** TFLOP/s; {peak_line}.",
        "",
        setup + " Model TFLOP/s are estimates from the forward MACs M: 6M FLOPs per training image, "
        "(4K+6)M for PGD-K, 4M per APGD iteration. The ceiling of fp32 rows is "
        f"{fp32_kind.upper()} (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}), of bf16 rows bf16. "
        "Speedup: pruned images/s over dense on the same path.",
        "",
        "| workload | model | path | images/s | ≈ model TFLOP/s | % of measured ceiling | % of datasheet peak "
        "| speedup vs dense |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *[r.cells(None if r.model == "dense" else dense_of[(r.workload, r.path)]) for r in rows],
        "",
        f"Inference latency at batch 256 (`measure_latency`, eval mode): {speedups}.",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run; printed only unless --out")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--dry-run", action="store_true",
                        help="run every code path on the CPU with tiny settings (numbers meaningless)")
    parser.add_argument("--n-train", type=int, default=None, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per setting (>= 5)")
    parser.add_argument("--device", default="cuda",
                        help="'cuda' (default); 'cpu' only smoke-tests the script, nothing is written")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu.md (default: benchmarks/results for a full CUDA run)")
    args = parser.parse_args(argv)
    dev = torch.device("cpu" if args.dry_run else args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu.py needs a CUDA device, and torch.cuda.is_available() is False here. "
            "Run it on a GPU machine (or --dry-run to check the script on a CPU); the CPU speed "
            "benchmarks are bench_train.py and bench_eval.py."
        )
    from robustprune.attacks import AdversarialConfig
    from robustprune.data import create_datasets
    from robustprune.evaluation import count_macs_params, measure_latency
    from robustprune.models import create_model

    torch.backends.cudnn.benchmark = True
    peaks = None
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        device_name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        peaks = peak_tflops(props.name)
    else:
        device_name = "CPU (smoke test: numbers are meaningless)"
    smoke = dev.type != "cuda"
    quick = args.quick or smoke
    n_train = args.n_train or (2048 if quick else 10240)
    n_eval = 512 if quick else 2048
    mm_n = 4096 if quick else 8192
    epochs = max(1, args.epochs)
    if smoke:
        from robustprune._threads import use_threads

        use_threads()  # the CLI's CPU thread default (PyTorch's one per core oversubscribes)
        n_train, n_eval, mm_n, epochs = min(n_train, 64), 32, 256, 1
        args.batch_size = min(args.batch_size, 32)

    ceiling = {
        "bf16": matmul_tflops(torch.bfloat16, mm_n, dev),
        "fp32": matmul_tflops(torch.float32, mm_n, dev, tf32=False),
        "tf32": matmul_tflops(torch.float32, mm_n, dev, tf32=True),
    }
    # fp32 convolutions run on TF32 tensor cores when cuDNN allows it (PyTorch's default)
    fp32_kind = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    peak_of = dict(zip(("bf16", "tf32", "fp32"), peaks)) if peaks else {}

    data = create_datasets("synthetic", shape=(3, 32, 32), n_train=n_train, n_test=n_eval)
    xs = torch.stack([data.train[i][0] for i in range(n_train)]).to(dev)
    ys = torch.stack([data.train[i][1] for i in range(n_train)]).to(dev)
    x_eval = torch.stack([data.test[i][0] for i in range(n_eval)])
    y_eval = torch.stack([data.test[i][1] for i in range(n_eval)])
    info = data.info
    torch.manual_seed(0)
    base = create_model("resnet18-cifar", width=8 if smoke else 64, mean=info.mean, std=info.std).to(dev)
    variants = {"dense": base, "ε-pruned 50%": pruned_copy(base, dev)}
    example = torch.rand(1, 3, 32, 32, device=dev)
    macs = {name: count_macs_params(m, example)[0] for name, m in variants.items()}

    steps = 2 if smoke else 10
    adv = AdversarialConfig(kind="pgd", eps=8 / 255, steps=steps)
    rows: list[Row] = []
    trained: dict[str, torch.nn.Module] = {}
    for workload, adversarial, cost in (("standard", None, 6), (f"PGD-{steps}", adv, 4 * steps + 6)):
        for path in TRAIN_PATHS:
            if workload == "standard" and path.compile:
                continue
            kind = "bf16" if path.amp == "bf16" else fp32_kind
            for name, model in variants.items():
                m = copy.deepcopy(model)
                ips = fit_throughput(m, GpuBatches(xs, ys, args.batch_size), epochs, adversarial, path, dev, smoke)
                rows.append(Row(f"{workload} training", name, path.label, ips, ips * cost * macs[name] / 1e12,
                                ceiling[kind], peak_of.get(kind)))
                trained.setdefault(name, m)
    n_iter = 5 if smoke else 100
    attacked = {}
    for channels_last in (False, True):
        for name, m in trained.items():
            ips, attacked[name] = apgd_throughput(m.float(), x_eval, y_eval, n_iter, 3 if quick else 5, dev,
                                                   channels_last)
            rows.append(Row(f"APGD-CE, {n_iter} it", name, "fp32" + (", channels-last" if channels_last else ""),
                            ips, ips * n_iter * 4 * macs[name] / 1e12, ceiling[fp32_kind], peak_of.get(fp32_kind)))
    latency = {(name, cl): measure_latency(m, (3, 32, 32), dev, batches=(256,), channels_last=cl)["batch256"]
               for cl in (False, True) for name, m in variants.items()}

    command = "python benchmarks/bench_gpu.py" + (" --quick" if args.quick else "") + (" --dry-run" if args.dry_run else "")
    setup = (f"{n_train} training images per epoch, batch {args.batch_size}, SGD, data resident on the GPU; "
             f"median of {epochs} timed epochs after a warm-up epoch (which also compiles). APGD-CE: {n_eval} "
             "test images, Linf 8/255, batch 512, on the clean-correct ones ("
             + ", ".join(f"{k}: {v}" for k, v in attacked.items()) + ").")
    lines = render(rows, latency, command=command, device=device_name, macs=macs, ceiling=ceiling, mm_n=mm_n,
                   peak_of=peak_of, fp32_kind=fp32_kind, setup=setup)
    text = "\n".join(lines)
    print(text)
    out = args.out if args.out is not None else (RESULTS if not quick and not smoke else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
