"""``evaluate``: clean accuracy, robust accuracy (AutoAttack), MACs, params and latency in
one call, for every model of a comparison (the dense baseline included).

>>> result = evaluate(model, loaders.test, eps=8 / 255, n_examples=1000)
>>> result.clean_accuracy, result.robust_accuracy, result.macs, result.latency_ms["batch1"]
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustprune import distributed, pruners
from robustprune._inputs import (
    BatchValidator,
    check_bool,
    check_int,
    check_logits,
    check_materialized,
    first_forward,
    resolve_example_inputs,
)
from robustprune._modes import module_modes, restore_modes
from robustprune._speed import check_cuda_graphs, fast_path
from robustprune.attacks import Norm, RobustResult, rebatch, robust_accuracy
from robustprune.attacks.autoattack import check_robust_arguments
from robustprune.errors import InvalidArgumentError
from robustprune.metrics._checks import check_shape
from robustprune.models import model_spec

__all__ = ["EvalResult", "evaluate", "count_macs_params", "measure_latency"]

logger = logging.getLogger(__name__)

#: batch sizes of the latency measurement on a CPU, as ``latency_ms`` keys ``batch1``, ``batch64``
LATENCY_BATCHES = (1, 64)
#: batch sizes of the latency measurement on CUDA (``batch1``, ``batch64``, ``batch256``)
CUDA_LATENCY_BATCHES = (1, 64, 256)


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        clean_accuracy: accuracy on every example of the loader (fp32, eval mode).
        robust_accuracy: AutoAttack robust accuracy on the first ``n_examples`` (None when
            ``eps`` is None); ``robust.clean_accuracy`` is the clean accuracy on those same
            examples, and ``robust_accuracy <= robust.clean_accuracy`` always.
        macs, params: multiply-accumulates of one forward pass of one example, and the
            parameter count (torch-pruning's counter).
        latency_ms: median forward time in milliseconds of warm runs, keys ``"batch1"`` and
            ``"batch64"`` (and ``"batch256"`` on CUDA; empty when ``latency=False``).
        latency_threads: the CPU threads PyTorch used for the latency runs on a CPU
            (``torch.get_num_threads()``; the CLI and recipe runs set it, see
            :mod:`robustprune._threads`); None on CUDA or without latency.
        robust: the full :class:`~robustprune.attacks.RobustResult` (None without ``eps``).
        n: examples behind ``clean_accuracy``.
        device: where it ran.
    """

    clean_accuracy: float
    robust_accuracy: float | None
    macs: int
    params: int
    latency_ms: dict[str, float]
    robust: RobustResult | None
    n: int
    device: str
    latency_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field (``robust`` as its own dict)."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "macs": self.macs,
            "params": self.params,
            "latency_ms": dict(self.latency_ms),
            "robust": None if self.robust is None else self.robust.to_dict(),
            "n": self.n,
            "device": self.device,
            "latency_threads": self.latency_threads,
        }

    def __str__(self) -> str:
        robust = "-" if self.robust_accuracy is None else f"{self.robust_accuracy:.2%}"
        lat = ", ".join(f"{k} {v:.3g} ms" for k, v in self.latency_ms.items())
        if lat and self.latency_threads is not None:
            lat += f" ({self.latency_threads} CPU thread{'s' if self.latency_threads > 1 else ''})"
        return (
            f"clean {self.clean_accuracy:.2%} (n={self.n}), robust {robust}, "
            f"MACs {self.macs:,}, params {self.params:,}" + (f", latency {lat}" if lat else "")
        )


def evaluate(
    model: nn.Module,
    loader: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    *,
    norm: Norm = "Linf",
    eps: float | None = None,
    attacks: Sequence[str] | str = ("apgd-ce", "apgd-t"),
    n_examples: int | None = None,
    example_inputs: torch.Tensor | None = None,
    latency: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    batch_size: int = 256,
    n_iter: int = 100,
    progress: bool = True,
    state_path: str | os.PathLike[str] | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
    cuda_graphs: bool = False,
) -> EvalResult:
    """Clean accuracy, robust accuracy, MACs, params and latency of ``model``.

    Args:
        model: inputs in [0, 1] -> logits; put in eval mode (its mode is restored) and
            moved to ``device``.
        loader: the test DataLoader (unshuffled) or a tuple ``(x, y)`` of tensors.
        norm, eps, attacks, n_examples, seed, batch_size, n_iter, state_path, channels_last,
            compile, cuda_graphs: the robust evaluation, see
            :func:`robustprune.attacks.robust_accuracy`; ``eps=None`` skips it.
        example_inputs: one input batch for counting MACs; default a single example of
            the shape recorded by ``create_model``, else the loader's first example.
        latency: measure the median forward time at batch 1 and 64.
        device: "auto", "cpu", "cuda", "cuda:1"...

    Under ``torchrun`` the examples are shared between the ranks and the counts summed;
    every rank returns the same accuracies (latency is measured per rank).
    """
    check_int("batch_size", batch_size, low=1)
    if eps is not None:
        check_robust_arguments(
            eps=eps, norm=norm, attacks=attacks, n_examples=n_examples, batch_size=batch_size,
            seed=seed, n_iter=n_iter, state_path=state_path, channels_last=channels_last,
            compile=compile, cuda_graphs=cuda_graphs,
        )
    dev = distributed.resolve_device(device)
    if eps is not None:
        check_cuda_graphs(cuda_graphs, dev, "evaluate")
    ctx = distributed.setup(dev)
    net = distributed.unwrap(model)
    check_materialized(net, "evaluate")
    modes = module_modes(net)
    try:
        net.eval().to(dev)
        clean, n = _clean_accuracy(net, loader, batch_size, dev, ctx)
        inputs = _example_inputs(net, loader, example_inputs).to(dev)
        macs, params = count_macs_params(net, inputs)
        latency_ms = measure_latency(net, inputs.shape[1:], dev) if latency else {}
        threads = torch.get_num_threads() if latency and dev.type == "cpu" else None
    finally:
        restore_modes(modes)
    robust = None
    if eps is not None:
        robust = robust_accuracy(
            net, loader, norm=norm, eps=eps, attacks=attacks, n_examples=n_examples,
            batch_size=batch_size, seed=seed, device=dev, n_iter=n_iter, progress=progress,
            state_path=state_path, channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs,
        )
        if robust.robust_accuracy > robust.clean_accuracy:
            raise RuntimeError(
                f"robust accuracy {robust.robust_accuracy} exceeds clean accuracy "
                f"{robust.clean_accuracy} on the same examples; please report this bug."
            )
        if robust.n == n and abs(robust.clean_accuracy - clean) > 1e-12:
            logger.warning(
                "clean accuracy differs between the two passes over the same %d examples "
                "(%.4f vs %.4f): the model or the loader is not deterministic.",
                n, clean, robust.clean_accuracy,
            )
    return EvalResult(
        clean_accuracy=clean,
        robust_accuracy=None if robust is None else robust.robust_accuracy,
        macs=macs,
        params=params,
        latency_ms=latency_ms,
        robust=robust,
        n=n,
        device=str(dev),
        latency_threads=threads,
    )


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """``(MACs, params)`` of one forward pass on ``example_inputs``, as plain ints
    (:func:`robustprune.pruners.count_macs_params`: torch-pruning's counter, on a clone)."""
    macs, params = pruners.count_macs_params(model, example_inputs)
    return int(macs), int(params)


def latency_batches(device: torch.device) -> tuple[int, ...]:
    """The default batch sizes of :func:`measure_latency` on ``device``: :data:`LATENCY_BATCHES`
    on a CPU, :data:`CUDA_LATENCY_BATCHES` (a GPU serves batches) on CUDA."""
    return CUDA_LATENCY_BATCHES if torch.device(device).type == "cuda" else LATENCY_BATCHES


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str,
    *,
    batches: Sequence[int] | None = None,
    warmup: int = 3,
    runs: int = 10,
    threads: int | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Median forward time (ms) of ``runs`` warm runs per batch size (after ``warmup`` runs), in
    eval mode under ``no_grad``, on random inputs of ``input_shape``, with ``threads`` CPU
    threads (default: PyTorch's current count; put back afterwards). Returns
    ``{"batch1": ms, "batch64": ms}`` (one key per batch; default batches
    :func:`latency_batches`: 1 and 64 on a CPU, 1, 64 and 256 on CUDA).

    On CUDA each run is timed by CUDA events on the current stream (the kernels' time, no
    host overhead of synchronizing), after ``warmup`` runs that also let cuDNN pick its
    algorithms. ``channels_last=True`` measures the model and inputs in the channels-last
    memory format (4-d inputs; the model is put back to contiguous afterwards), the layout
    tensor cores prefer.

    On a machine whose cores are busy, more threads than idle cores make every forward wait
    for a descheduled thread (milliseconds instead of microseconds for a small model):
    measure with the count the model will run with, and report it next to the numbers.

    ``device`` is a ``torch.device`` or ``"cpu"``, ``"cuda[:N]"``, ``"auto"``. Bad arguments
    (a device that is not there, a batch size below 1, ``runs=0``, an ``input_shape`` the
    model cannot run on) are refused with an :class:`~robustprune.errors.InvalidArgumentError`
    before anything is timed; the model is left as it was."""
    device, input_shape, batches = _check_latency_arguments(
        model, input_shape, device, batches, warmup, runs, threads, channels_last)
    before = torch.get_num_threads()
    modes = module_modes(model)  # put back module by module (a frozen BatchNorm stays in eval)
    model.eval()
    fmt = torch.channels_last if channels_last and len(input_shape) == 3 else torch.contiguous_format
    out: dict[str, float] = {}
    g = torch.Generator().manual_seed(0)
    try:
        if threads is not None and threads != before:
            torch.set_num_threads(threads)
        with torch.no_grad():
            probe = torch.rand((1, *input_shape), generator=torch.Generator().manual_seed(0)).to(device)
            first_forward(model, probe, f"measure_latency (input_shape {input_shape})")
            with fast_path(model, fmt is torch.channels_last, None) as net:  # weights' formats put back
                for b in batches:
                    x = torch.rand((b, *input_shape), generator=g).to(device).contiguous(memory_format=fmt)
                    out[f"batch{b}"] = 1000.0 * statistics.median(_forward_times(net, x, device, warmup, runs))
    finally:
        restore_modes(modes)
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
    return out


def _check_latency_arguments(
    model: Any, input_shape: Any, device: Any, batches: Any, warmup: Any, runs: Any, threads: Any, channels_last: Any
) -> tuple[torch.device, tuple[int, ...], tuple[int, ...]]:
    """:func:`measure_latency`'s arguments checked before the model is touched: the device
    (resolved), the per-example input shape and the batch sizes as tuples of ints."""
    check_materialized(model, "measure_latency")
    shape = check_shape(input_shape)
    dev = distributed.resolve_device(device)
    on = {t.device for t in (*model.parameters(), *model.buffers())}
    if on and on != {dev}:
        where = ", ".join(sorted(str(d) for d in on))
        raise InvalidArgumentError(
            f"measure_latency: the model is on {where} but device is {dev}; move it first "
            f"(model.to({str(dev)!r})) or pass the model's device.", argument="device")
    if batches is None:
        sizes = latency_batches(dev)
    elif isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence) or not batches:
        raise InvalidArgumentError(f"batches must be a non-empty sequence of batch sizes, e.g. (1, 64), got {batches!r}.",
                                   argument="batches")
    else:
        sizes = tuple(check_int("batches", b, low=1, why="each is a batch size") for b in batches)
    check_int("warmup", warmup, low=0)
    check_int("runs", runs, low=1, why="the median of the timed runs is reported")
    if threads is not None:
        check_int("threads", threads, low=1, why="CPU threads for the latency runs")
    check_bool("channels_last", channels_last)
    return dev, shape, sizes


def _forward_times(model: nn.Module, x: torch.Tensor, device: torch.device, warmup: int, runs: int) -> list[float]:
    """Seconds of ``runs`` forwards after ``warmup`` ones: CUDA events on CUDA, else wall time."""
    for _ in range(warmup):
        model(x)
    times = []
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(runs):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            model(x)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1000.0)
        return times
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return times


def _clean_accuracy(
    net: nn.Module,
    loader: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    device: torch.device,
    ctx: distributed.DistContext,
) -> tuple[float, int]:
    counts = torch.zeros(2, dtype=torch.float64)
    check = BatchValidator("evaluate's data")
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for index, (x, y) in enumerate(rebatch(loader, batch_size, None, check=check)):
            if index % ctx.world_size != ctx.rank:
                continue
            x = x.to(device, torch.float32, non_blocking=True)
            y = y.to(device, torch.long, non_blocking=True)
            logits = first_forward(net, x, "evaluate") if check.classes is None else net(x)
            classes = check_logits(logits, x.shape[0], where=f"evaluation batch {index + 1}")
            if check.classes is None:
                check.set_classes(classes)
            counts[0] += float((logits.argmax(1) == y).sum())
            counts[1] += y.shape[0]
    counts = distributed.sum_over_ranks(counts, ctx, device)
    n = int(counts[1])
    if n == 0:
        raise InvalidArgumentError("evaluate got an empty loader.")
    return float(counts[0]) / n, n


def _example_inputs(
    net: nn.Module,
    loader: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    example_inputs: torch.Tensor | None,
) -> torch.Tensor:
    """One example for MACs and latency: the caller's first one, else one of the shape
    ``create_model`` recorded, else the loader's first example."""
    if example_inputs is not None:
        if not isinstance(example_inputs, torch.Tensor) or example_inputs.ndim < 2:
            raise InvalidArgumentError(
                "example_inputs must be a batched tensor (N, ...), e.g. torch.rand(1, 3, 32, 32)."
            )
        return example_inputs[:1]
    spec = model_spec(net)
    data_example = None
    if spec is None or spec.input_shape is None:
        data_example = next((x.float() for x, _ in rebatch(loader, 1, 1)), None)
    return resolve_example_inputs(net, None, data_example)  # type: ignore[return-value]

