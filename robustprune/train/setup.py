"""Set-up of a :func:`robustprune.train.fit` run: loaders (and their sharding under
torchrun), the autocast dtype, and the optimizer and scheduler from timm's factories."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from robustprune import distributed
from robustprune.errors import InvalidArgumentError
from robustprune.train.config import AmpMode

__all__ = [
    "split_loaders",
    "num_batches",
    "amp_dtype",
    "create_optimizer",
    "create_scheduler",
    "shard_train",
    "shard_test",
]

def split_loaders(loaders: Any) -> tuple[Iterable[Any], Iterable[Any] | None]:
    """``(train, test)`` of a Loaders object, a ``(train, test)`` tuple or a train loader
    (test ``None``)."""
    if hasattr(loaders, "train") and hasattr(loaders, "test"):
        return loaders.train, loaders.test
    if isinstance(loaders, (tuple, list)) and len(loaders) == 2 and not isinstance(
        loaders[0], torch.Tensor
    ):
        return loaders[0], loaders[1]
    if isinstance(loaders, Iterable):
        return loaders, None
    raise InvalidArgumentError(
        "loaders must be a Loaders object (.train/.test), a (train, test) tuple or a train "
        f"DataLoader, got {type(loaders).__name__}."
    )


def num_batches(loader: Iterable[Any]) -> int:
    """The number of batches of a non-empty train loader (the schedule is set per update)."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise InvalidArgumentError(
            "fit needs a train loader with a length (the schedule is set per update); use a "
            "DataLoader over a map-style dataset."
        ) from exc
    if n == 0:
        raise InvalidArgumentError("The train loader is empty.")
    return n


def amp_dtype(amp: AmpMode, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a (validated) ``amp`` setting on ``device``: bf16, or None for
    fp32 ("auto" is bf16 on CUDA devices that support it)."""
    if amp is True or amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InvalidArgumentError("This GPU does not support bf16; use amp='off'.")
        return torch.bfloat16
    if amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def create_optimizer(
    net: nn.Module, name: str, *, lr: float, weight_decay: float, momentum: float,
    extra: Mapping[str, Any] | None,
) -> torch.optim.Optimizer:
    """timm's optimizer over the model's *current* parameters (biases and norms: no decay)."""
    from timm.optim import create_optimizer_v2

    if not any(p.requires_grad for p in net.parameters()):
        raise InvalidArgumentError("The model has no trainable parameters (requires_grad=False).")
    try:
        return create_optimizer_v2(
            net, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum, **dict(extra or {})
        )
    except TypeError as exc:
        raise InvalidArgumentError(f"Bad optimizer_kwargs for '{name}': {exc}.") from exc


def create_scheduler(
    opt: torch.optim.Optimizer, name: str | None, *, epochs: int, warmup_epochs: int,
    min_lr: float, steps_per_epoch: int, extra: Mapping[str, Any] | None,
) -> Any:
    """timm's scheduler, stepped per update (None for no schedule)."""
    if name is None or name == "none" or epochs == 0:
        return None
    from timm.scheduler import create_scheduler_v2

    try:
        sched, _ = create_scheduler_v2(
            opt, sched=name, num_epochs=epochs, warmup_epochs=warmup_epochs, min_lr=min_lr,
            step_on_epochs=False, updates_per_epoch=steps_per_epoch, **dict(extra or {}),
        )
    except TypeError as exc:
        raise InvalidArgumentError(f"Bad scheduler_kwargs for '{name}': {exc}.") from exc
    except (ValueError, AssertionError) as exc:  # timm's own checks of a schedule's arguments
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidArgumentError(
            f"The '{name}' scheduler refuses these settings ({first}); adjust epochs, warmup_epochs or "
            "scheduler_kwargs, or pick another scheduler.", argument="scheduler") from exc
    return sched


def shard_train(loader: Iterable[Any], ctx: distributed.DistContext, seed: int) -> Iterable[Any]:
    """Under torchrun, the same loader with a DistributedSampler (batch size per process)."""
    if not ctx.distributed:
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise InvalidArgumentError(
            "Distributed fit needs the train loader to be a DataLoader with a batch_size."
        )
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(
        loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
    )
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler,
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, drop_last=loader.drop_last,
    )


def shard_test(loader: Iterable[Any] | None, ctx: distributed.DistContext) -> Iterable[Any] | None:
    """Under torchrun, every rank evaluates examples ``rank, rank + N, ...`` (no padding)."""
    if loader is None or not ctx.distributed:
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise InvalidArgumentError("Distributed fit needs the test loader to be a DataLoader.")
    indices = list(range(ctx.rank, len(loader.dataset), ctx.world_size))  # type: ignore[arg-type]
    return DataLoader(
        Subset(loader.dataset, indices), batch_size=loader.batch_size, shuffle=False,
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
    )
