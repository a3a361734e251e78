"""``fit``: standard and adversarial training or finetuning, with regularizers, bf16 AMP,
DistributedDataParallel, and checkpoints that resume bit-for-bit.

>>> loaders = create_loaders("digits", batch_size=64)
>>> result = fit(model, loaders, epochs=10, lr=0.05)                       # standard training
>>> adv = AdversarialConfig(kind="pgd", eps=0.1, steps=10)
>>> fit(model, loaders, epochs=3, lr=0.01, adversarial=adv, regularizers=[BetaDispersion(0.1)])

The loss of each step is described in :mod:`robustprune.train.loop`. The optimizer and the
scheduler come from timm's factories and are built from the model's *current* parameters at
every call, so a model pruned between two calls never leaves the optimizer holding stale
tensors. The schedule is stepped per update.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustprune import distributed
from robustprune.errors import InvalidArgumentError
from robustprune.train.config import FitConfig, resolve_config
from robustprune.train.loop import Loop, LoopSettings
from robustprune.train.results import EpochStats, FitResult
from robustprune.train.resume import (
    CHECKPOINT_NAME,
    Regularizer,
    TrainingState,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from robustprune.train.rng import seed_everything
from robustprune.train.setup import (
    amp_dtype,
    create_optimizer,
    create_scheduler,
    num_batches,
    shard_test,
    shard_train,
    split_loaders,
)

__all__ = ["fit"]

logger = logging.getLogger(__name__)


def fit(
    model: nn.Module,
    loaders: Any,
    config: FitConfig | int | None = None,
    *,
    regularizers: Sequence[Regularizer] = (),
    device: str | torch.device = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    **options: Any,
) -> FitResult:
    """Train (or finetune) ``model`` in place for ``epochs`` epochs.

    Args:
        model: inputs in [0, 1] -> logits. Moved to ``device``; its train/eval mode is
            restored at the end.
        loaders: a :class:`robustprune.data.Loaders` (``.train``, ``.test``), a tuple
            ``(train_loader, test_loader)``, or a single train loader.
        config: a :class:`FitConfig`, or the number of epochs (``fit(model, loaders, 10)``).
        regularizers: callables ``r(model) -> scalar tensor`` added to the loss (e.g.
            :class:`robustprune.regularizers.BetaDispersion`); they receive the unwrapped
            model.
        device: "auto" (``cuda:$LOCAL_RANK`` if available, else CPU), "cpu", "cuda:1"...
        checkpoint_dir: write ``last.pt`` (model, optimizer, scheduler, every RNG state)
            atomically after each epoch; a later call with the same arguments resumes from
            it and ends with the same weights as an uninterrupted run.
        seed: seeds the torch, numpy and python RNGs for the run (the caller's RNG states
            are restored on return), the attacks' random starts and, under torchrun, the
            distributed sampler.
        progress: tqdm bars with loss and accuracy (rank 0 only).
        on_epoch_end: called with each epoch's :class:`EpochStats` after its checkpoint.
        **options: fields of :class:`FitConfig` (``epochs``, ``lr``, ``optimizer``,
            ``weight_decay``, ``momentum``, ``scheduler``, ``warmup_epochs``, ``min_lr``,
            ``clip_grad_norm``, ``amp``, ``adversarial``, ``optimizer_kwargs``,
            ``scheduler_kwargs``); given next to ``config`` they override its fields.

    Under ``torchrun --nproc_per_node=N`` the model is wrapped in DistributedDataParallel
    (NCCL on CUDA, gloo on CPU), the train loader's batch size is per process, the data is
    sharded with a :class:`~torch.utils.data.DistributedSampler`, metrics are summed over
    ranks, BatchNorm statistics are synchronized from rank 0 after each epoch, and only
    rank 0 writes checkpoints and shows progress.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite; with ``checkpoint_dir`` the
            model is restored to the last good checkpoint.
        InvalidArgumentError: a bad argument (unknown optimizer, empty loader, ...).
    """
    cfg = resolve_config(config, options)
    regs = _check_regularizers(regularizers)
    train_loader, test_loader = split_loaders(loaders)
    dev = distributed.resolve_device(device)
    amp = amp_dtype(cfg.amp, dev)
    ctx = distributed.setup(dev)
    net = distributed.unwrap(model)
    was_training = net.training
    _move(net, regs, dev)
    train_loader = shard_train(train_loader, ctx, seed)
    test_loader = shard_test(test_loader, ctx)
    steps_per_epoch = num_batches(train_loader)
    opt, sched = _optimizer_and_scheduler(net, cfg, steps_per_epoch)
    fingerprint = _fingerprint(cfg, regs, amp, seed=seed, world_size=ctx.world_size,
                               steps_per_epoch=steps_per_epoch)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    settings = LoopSettings(cfg.adversarial, amp, dev, cfg.clip_grad_norm, progress, cfg.epochs, ckpt_path)
    caller_np, caller_py = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            state = TrainingState(net, opt, sched, regs, train_loader, torch.Generator(device=dev))
            history, resumed_from = _run_epochs(
                state, test_loader, settings, ctx, seed=seed, fingerprint=fingerprint,
                on_epoch_end=on_epoch_end,
            )
    finally:
        np.random.set_state(caller_np)
        random.setstate(caller_py)
        net.train(was_training)
    return _result(history, resumed_from, settings, cfg, ctx)


def _run_epochs(
    state: TrainingState,
    test_loader: Iterable[Any] | None,
    settings: LoopSettings,
    ctx: distributed.DistContext,
    *,
    seed: int,
    fingerprint: dict[str, Any],
    on_epoch_end: Callable[[EpochStats], None] | None,
) -> tuple[list[EpochStats], int]:
    """Resume from the checkpoint (or seed every RNG), then train the remaining epochs,
    checkpointing after each; returns the history and the epoch it resumed from."""
    dev, ckpt_path = settings.device, settings.checkpoint
    saved = load_checkpoint(ckpt_path, fingerprint, dev) if ckpt_path else None
    if saved is None:
        seed_everything(seed, ctx.rank, dev, state.attack_gen)
        history: list[EpochStats] = []
        start_epoch = 0
    else:
        history = restore(saved, state, ctx)
        start_epoch = int(saved["epoch"])
        logger.info("resuming from %s after epoch %d", ckpt_path, start_epoch)
    ddp: nn.Module = state.net
    if ctx.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            state.net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    loop = Loop(ddp, state, settings, ctx)
    for epoch in range(start_epoch, settings.epochs):
        stats = loop.epoch(state.loader, test_loader, epoch)
        history.append(stats)
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, epoch + 1, state, history, fingerprint, ctx)
        logger.info(
            "epoch %d/%d: loss %.4f, train acc %.2f%%, test acc %s, %.1fs",
            stats.epoch, settings.epochs, stats.loss, 100 * stats.train_accuracy,
            "-" if stats.test_accuracy is None else f"{100 * stats.test_accuracy:.2f}%",
            stats.seconds,
        )
        if on_epoch_end is not None:
            on_epoch_end(stats)
    return history, start_epoch


def _result(
    history: list[EpochStats], resumed_from: int, settings: LoopSettings, cfg: FitConfig,
    ctx: distributed.DistContext,
) -> FitResult:
    last = history[-1] if history else None
    return FitResult(
        history=tuple(history),
        final_train_accuracy=None if last is None else last.train_accuracy,
        final_test_accuracy=None if last is None else last.test_accuracy,
        epochs=cfg.epochs,
        resumed_from_epoch=resumed_from,
        checkpoint=None if settings.checkpoint is None else str(settings.checkpoint),
        device=str(settings.device),
        amp="off" if settings.amp_dtype is None else "bf16",
        world_size=ctx.world_size,
        adversarial=cfg.adversarial,
    )


def _move(net: nn.Module, regs: tuple[Regularizer, ...], device: torch.device) -> None:
    """The model and the regularizers that are modules (their state) onto ``device``."""
    net.to(device)
    for r in regs:
        if isinstance(r, nn.Module):
            r.to(device)


def _optimizer_and_scheduler(net: nn.Module, cfg: FitConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    """timm's optimizer over ``net``'s current parameters and its per-update schedule."""
    opt = create_optimizer(
        net, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        extra=cfg.optimizer_kwargs,
    )
    sched = create_scheduler(
        opt, cfg.scheduler, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
        steps_per_epoch=steps_per_epoch, extra=cfg.scheduler_kwargs,
    )
    return opt, sched


def _check_regularizers(regularizers: Sequence[Regularizer]) -> tuple[Regularizer, ...]:
    regs = tuple(regularizers)
    for r in regs:
        if not callable(r):
            raise InvalidArgumentError(
                f"regularizers must be callables model -> scalar tensor, got {type(r).__name__}."
            )
    return regs


def _fingerprint(
    cfg: FitConfig, regs: tuple[Regularizer, ...], amp: torch.dtype | None, *, seed: int,
    world_size: int, steps_per_epoch: int,
) -> dict[str, Any]:
    """What a checkpoint must have been written with to be resumed (these keys and values
    are stored in every checkpoint: keep them, or old checkpoints stop resuming)."""
    adv = cfg.adversarial
    return {
        "epochs": cfg.epochs, "lr": cfg.lr, "optimizer": cfg.optimizer, "weight_decay": cfg.weight_decay,
        "momentum": cfg.momentum, "scheduler": cfg.scheduler, "warmup_epochs": cfg.warmup_epochs,
        "min_lr": cfg.min_lr, "adversarial": None if adv is None else dataclasses.asdict(adv),
        "regularizers": [type(r).__name__ for r in regs], "amp": str(amp),
        "seed": seed, "world_size": world_size, "steps_per_epoch": steps_per_epoch,
        "clip_grad_norm": cfg.clip_grad_norm,
        "optimizer_kwargs": repr(sorted(dict(cfg.optimizer_kwargs or {}).items())),
        "scheduler_kwargs": repr(sorted(dict(cfg.scheduler_kwargs or {}).items())),
    }
