"""Process-group plumbing shared by :func:`robustprune.train.fit` and the evaluators.

Under ``torchrun --nproc_per_node=N`` every process sees ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the default process group (NCCL on CUDA, gloo on
CPU) unless the caller already did. Without those variables everything runs as a single
process (rank 0 of 1) and no process group is created.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustprune.errors import InvalidArgumentError

__all__ = [
    "DistContext",
    "setup",
    "resolve_device",
    "unwrap",
    "all_reduce_sum",
    "sum_over_ranks",
    "collective_device",
    "all_gather_objects",
    "barrier",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0


def setup(device: torch.device) -> DistContext:
    """The current :class:`DistContext`, joining the process group if torchrun asked for one.

    The backend is NCCL when ``device`` is CUDA, gloo otherwise. An existing default
    process group (the caller's) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise InvalidArgumentError(
            "WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run a single process."
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    logger.info("joined process group: rank %d of %d (%s)", ctx.rank, ctx.world_size, backend)
    return ctx


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is ``cuda:$LOCAL_RANK`` when CUDA is available, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        resolved = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"device={device!r} was requested but CUDA is not available; use device='cpu' or 'auto'."
        )
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", _env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
    return resolved


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else ``model``)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place (a no-op for a single process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def collective_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Where a collective runs: NCCL reduces CUDA tensors (on ``device``), gloo CPU tensors
    (and a single process needs none: the CPU)."""
    if ctx.distributed and dist.get_backend() == "nccl":
        return device
    return torch.device("cpu")


def sum_over_ranks(tensor: torch.Tensor, ctx: DistContext, device: torch.device) -> torch.Tensor:
    """``tensor`` summed over all ranks, on the CPU (reduced on :func:`collective_device`;
    when ``tensor`` already lives there it is summed in place)."""
    t = tensor.to(collective_device(device, ctx))
    all_reduce_sum(t, ctx)
    return t.cpu()


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` for a single process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op for a single process)."""
    if ctx.distributed:
        dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidArgumentError(f"Environment variable {name}={value!r} is not an integer.") from exc
