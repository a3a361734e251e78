"""GPU throughput of fit and robust_accuracy next to the device's matmul ceiling.

``resnet18-cifar`` on ``synthetic`` 32x32 data (10 classes), on one CUDA device:

* the matmul ceiling: TFLOP/s of a large square matmul in bf16, fp32 (TF32 off) and TF32;
* ``fit`` images/s: standard training and PGD-10 adversarial training, each in fp32 and
  with bf16 autocast (median epoch time of ``--epochs`` timed epochs after a warm-up one);
* ``robust_accuracy`` with APGD-CE (100 iterations, Linf 8/255): attacked images/s.

Achieved model TFLOP/s are estimates from the forward MACs ``M`` of one image: a training
step costs ``6M`` FLOPs (forward 2M, backward 4M), a PGD/APGD iteration ``4M`` (forward
plus the backward to the input), so a PGD-K step costs ``(4K + 6)M``.

The training data lives on the GPU (an iterable of pre-made batches), so the numbers measure
the training loop, not a CPU DataLoader. ``torch.backends.cudnn.benchmark`` is on.

    python benchmarks/bench_gpu.py            # writes benchmarks/results/{train,eval}.md
    python benchmarks/bench_gpu.py --quick    # a short run, printed only

Needs only torch, torchvision, timm, torch-pruning and pyautoattack next to this checkout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run; results are printed only")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--dry-run", action="store_true",
                        help="run every code path on the CPU with tiny settings (numbers meaningless)")
    parser.add_argument("--n-train", type=int, default=None, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per setting (>= 5)")
    parser.add_argument("--device", default="cuda",
                        help="'cuda' (default); 'cpu' only smoke-tests the script, nothing is written")
    args = parser.parse_args(argv)
    dev = torch.device("cpu" if args.dry_run else args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu.py needs a CUDA device, and torch.cuda.is_available() is False here. "
            "Run it on a GPU machine; the CPU speed benchmarks are bench_train.py and bench_eval.py."
        )
    from robustprune.attacks import AdversarialConfig, robust_accuracy
    from robustprune.data import create_datasets
    from robustprune.evaluation import count_macs_params
    from robustprune.models import create_model
    from robustprune.train import fit

    torch.backends.cudnn.benchmark = True
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        device_name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        peaks = peak_tflops(props.name)
        if peaks is not None:
            print(f"datasheet peak of {props.name}: bf16 {peaks[0]:g}, TF32 {peaks[1]:g}, fp32 {peaks[2]:g} TFLOP/s")
    else:
        device_name = "CPU (smoke test: numbers are meaningless)"
    smoke = dev.type != "cuda"
    quick = args.quick or smoke
    n_train = args.n_train or (2048 if quick else 10240)
    n_eval = 512 if quick else 2048
    mm_n = 4096 if quick else 8192
    if smoke:
        n_train, n_eval, mm_n = min(n_train, 64), 32, 256
        args.batch_size = min(args.batch_size, 32)
    epochs = max(1, args.epochs)

    ceiling = {
        "bf16": matmul_tflops(torch.bfloat16, mm_n, dev),
        "fp32": matmul_tflops(torch.float32, mm_n, dev, tf32=False),
        "tf32": matmul_tflops(torch.float32, mm_n, dev, tf32=True),
    }

    data = create_datasets("synthetic", shape=(3, 32, 32), n_train=n_train, n_test=n_eval)
    xs = torch.stack([data.train[i][0] for i in range(n_train)]).to(dev)
    ys = torch.stack([data.train[i][1] for i in range(n_train)]).to(dev)
    x_eval = torch.stack([data.test[i][0] for i in range(n_eval)])
    y_eval = torch.stack([data.test[i][1] for i in range(n_eval)])
    info = data.info

    def new_model() -> torch.nn.Module:
        torch.manual_seed(0)
        width = 8 if smoke else 64
        return create_model("resnet18-cifar", width=width, mean=info.mean, std=info.std).to(dev)

    macs, params = count_macs_params(new_model(), torch.rand(1, 3, 32, 32, device=dev))
    adv = AdversarialConfig(kind="pgd", eps=8 / 255, steps=10)
    rows = []
    trained = None
    for name, adversarial, flops_per_image in (
        ("standard", None, 6 * macs),
        ("PGD-10", adv, (4 * 10 + 6) * macs),
    ):
        for amp in ("off", "bf16"):
            model = new_model()
            loader = GpuBatches(xs, ys, args.batch_size)
            result = fit(model, loader, epochs + 1, lr=0.05, adversarial=adversarial, amp=amp,
                         device=dev, progress=False)
            seconds = statistics.median(h.seconds for h in result.history[1:])
            ips = n_train / seconds
            # fp32 convolutions run on TF32 tensor cores when cuDNN allows it (PyTorch's
            # default), so that is their ceiling; plain fp32 is the ceiling otherwise
            fp32_peak = ceiling["tf32"] if torch.backends.cudnn.allow_tf32 else ceiling["fp32"]
            peak = ceiling["bf16"] if amp == "bf16" else fp32_peak
            tflops = ips * flops_per_image / 1e12
            rows.append((name, "bf16 autocast" if amp == "bf16" else "fp32", ips, tflops,
                         100 * tflops / peak))
            if name == "standard" and amp == "bf16":
                trained = model

    assert trained is not None
    eps = 8 / 255
    robust_accuracy(trained, (x_eval[:64], y_eval[:64]), eps=eps, attacks=("apgd-ce",),
                    n_iter=5, device=dev, progress=False)  # warm-up
    eval_times, attacked = [], 0
    n_iter = 5 if smoke else 100
    for _ in range(3 if quick else 5):
        _sync(dev)
        t0 = time.perf_counter()
        res = robust_accuracy(trained, (x_eval, y_eval), eps=eps, attacks=("apgd-ce",),
                              n_iter=n_iter, batch_size=512, device=dev, progress=False)
        _sync(dev)
        eval_times.append(time.perf_counter() - t0)
        attacked = round(res.clean_accuracy * res.n)
    t_eval = statistics.median(eval_times)
    eval_tflops = attacked * n_iter * 4 * macs / t_eval / 1e12

    device_line = (
        f"Device: {device_name}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; resnet18-cifar: {macs / 1e9:.3f} GMACs/image, "
        f"{params / 1e6:.2f} M params."
    )
    ceiling_table = [
        f"Matmul ceiling ({mm_n}x{mm_n}): bf16 **{ceiling['bf16']:.0f}** TFLOP/s, "
        f"fp32 (TF32 off) **{ceiling['fp32']:.1f}** TFLOP/s, TF32 **{ceiling['tf32']:.0f}** TFLOP/s.",
    ]
    command = "python benchmarks/bench_gpu.py" + (" --quick" if args.quick else "")
    train_md = "\n".join([
        "## GPU training throughput (`fit`, resnet18-cifar, synthetic 32x32)",
        "",
        f"Command: `{command}`  ",
        device_line + "  ",
        *ceiling_table,
        "",
        f"{n_train} images per epoch, batch {args.batch_size}, SGD, data resident on the GPU; "
        f"median of {epochs} timed epochs after a warm-up epoch. Model TFLOP/s are estimates "
        "(6M FLOPs per training image, (4K+6)M for PGD-K); % is of the matching ceiling "
        f"(bf16 for autocast; for fp32 the TF32 ceiling, since cuDNN runs fp32 convolutions on TF32 "
        f"tensor cores by default: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}).",
        "",
        "| training | precision | images/s | ≈ model TFLOP/s | % of ceiling |",
        "|---|---|---:|---:|---:|",
        *[f"| {n} | {p} | {ips:,.0f} | {tf:.1f} | {pct:.0f}% |" for n, p, ips, tf, pct in rows],
        "",
    ])
    eval_md = "\n".join([
        "## GPU robust evaluation throughput (`robust_accuracy`, APGD-CE)",
        "",
        f"Command: `{command}`  ",
        device_line + "  ",
        *ceiling_table,
        "",
        f"resnet18-cifar after the bf16 standard-training run above; {n_eval} synthetic test "
        f"images, APGD-CE {n_iter} iterations, Linf eps=8/255, batch 512, fp32 (cuDNN may use TF32 "
        f"for convolutions, PyTorch's default); median of {len(eval_times)} runs.",
        "",
        "| evaluation | images | attacked (clean-correct) | time (s) | attacked images/s | ≈ model TFLOP/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| APGD-CE, {n_iter} it | {n_eval} | {attacked} | {t_eval:.2f} | {attacked / t_eval:,.0f} | "
        f"{eval_tflops:.1f} |",
        "",
    ])
    print(train_md)
    print(eval_md)
    if not quick and not smoke:
        from bench_train import write_section

        write_section(RESULTS / "train.md", "gpu", train_md, "Training benchmarks")
        write_section(RESULTS / "eval.md", "gpu", eval_md, "Evaluation benchmarks")


if __name__ == "__main__":
    main()
