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
from robustprune._inputs import (
    check_example_inputs,
    check_int,
    check_materialized,
    first_forward,
    resolve_example_inputs,
)
from robustprune._modes import eval_mode, module_modes, restore_modes
from robustprune._speed import check_cuda_graphs
from robustprune.errors import InvalidArgumentError
from robustprune.pruners.schedules import ScheduledPruning
from robustprune.train.config import FitConfig, compile_mode, resolve_config
from robustprune.train.distill import DistillConfig, check_teacher
from robustprune.train.epochs import Extras, Run
from robustprune.train.loggers import Logger, check_loggers
from robustprune.train.loop import LoopSettings
from robustprune.train.pruning import PruningDriver, ShiftedScheduler
from robustprune.train.results import EpochStats, FitResult
from robustprune.train.resume import (
    CHECKPOINT_NAME,
    Regularizer,
    TrainingState,
)
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
    pruning: ScheduledPruning | None = None,
    distill: DistillConfig | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    keep_checkpoints: Sequence[int] = (),
    loggers: Sequence[Logger] | None = None,
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
        progress: tqdm bars with loss and accuracy on a terminal, one line per epoch
            elsewhere (rank 0 only; see :mod:`robustprune._progress`).
        on_epoch_end: called with each epoch's :class:`EpochStats` after its checkpoint.
        pruning: a :class:`~robustprune.pruners.schedules.ScheduledPruning`: prune the model
            during the fit (iterative or during-training schedules); before each scheduled
            epoch the model is pruned and the optimizer and scheduler are rebuilt over its
            new parameters (momentum buffers start over; the learning-rate curve continues
            at the current update). Resuming across a pruning step replays the recorded
            steps before the checkpoint's weights are loaded.
        distill: a :class:`~robustprune.train.distill.DistillConfig`: add a distillation
            term from a teacher (see :mod:`robustprune.train.distill`).
        resume_from: a checkpoint file to start from when ``checkpoint_dir`` holds none yet
            (e.g. the ``epoch5.pt`` a dense fit kept with ``keep_checkpoints=(5,)``, for a
            run that prunes at epoch 5 and continues); it must have been written by a fit
            with the same arguments, except pruning steps scheduled at or after its epoch.
        keep_checkpoints: after these epochs, also keep a copy ``epoch<N>.pt`` of the
            checkpoint (needs ``checkpoint_dir``).
        loggers: :class:`~robustprune.train.loggers.Logger` s (``CSVLogger(path)``,
            ``TensorBoardLogger(log_dir)``) that receive every epoch's statistics (rank 0
            only; on resume the restored epochs first); the caller closes them.
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
    check_int("seed", seed, low=0, high=2**63 - 1)
    regs = _check_regularizers(regularizers)
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise InvalidArgumentError(
            f"on_epoch_end must be a callable (called with each epoch's EpochStats) or None, got "
            f"{type(on_epoch_end).__name__}.", argument="on_epoch_end")
    logs = check_loggers(loggers)
    extras = _check_extras(cfg, pruning, distill, resume_from, keep_checkpoints, checkpoint_dir)
    train_loader, test_loader = split_loaders(loaders)
    dev = distributed.resolve_device(device)
    check_cuda_graphs(cfg.cuda_graphs, dev, "fit")
    ctx = distributed.setup(dev)
    net = distributed.unwrap(model)
    check_materialized(net, "fit")
    modes = module_modes(net)
    _move(net, regs, dev)
    run = _prepare(net, cfg, regs, extras, train_loader, dev, ctx, seed=seed, progress=progress,
                   checkpoint_dir=checkpoint_dir)
    test_loader = shard_test(test_loader, ctx)
    caller_np, caller_py = np.random.get_state(), random.getstate()
    teacher_mode = None if distill is None else distill.teacher.training
    try:
        if distill is not None:
            distill.teacher.eval()
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            history, resumed_from = run.epochs(test_loader, seed=seed, on_epoch_end=on_epoch_end, loggers=logs)
    finally:
        np.random.set_state(caller_np)
        random.setstate(caller_py)
        restore_modes(modes)
        if distill is not None:
            distill.teacher.train(teacher_mode)
    return _result(history, resumed_from, run.settings, cfg, ctx, run.driver)


def _result(
    history: list[EpochStats], resumed_from: int, settings: LoopSettings, cfg: FitConfig,
    ctx: distributed.DistContext, driver: PruningDriver | None,
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
        pruning=None if driver is None else driver.describe(),
        distill=None if settings.distill is None else settings.distill.describe(),
    )


def _move(net: nn.Module, regs: tuple[Regularizer, ...], device: torch.device) -> None:
    """The model and the regularizers that are modules (their state) onto ``device``."""
    net.to(device)
    for r in regs:
        if isinstance(r, nn.Module):
            r.to(device)


def _optimizer_and_scheduler(
    net: nn.Module, cfg: FitConfig, steps_per_epoch: int, *, window: tuple[int, int] | None = None
) -> tuple[Any, Any]:
    """timm's optimizer over ``net``'s current parameters and its per-update schedule, over
    the whole fit or, with ``window = (start, stop)`` epochs, a fresh schedule over those
    epochs (no warmup) stepped by the fit's global update count."""
    opt = create_optimizer(
        net, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        extra=cfg.optimizer_kwargs,
    )
    if window is None:
        sched = create_scheduler(
            opt, cfg.scheduler, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
            steps_per_epoch=steps_per_epoch, extra=cfg.scheduler_kwargs,
        )
        return opt, sched
    start, stop = window
    sched = create_scheduler(
        opt, cfg.scheduler, epochs=stop - start, warmup_epochs=0, min_lr=cfg.min_lr,
        steps_per_epoch=steps_per_epoch, extra=cfg.scheduler_kwargs,
    )
    return opt, None if sched is None else ShiftedScheduler(sched, start * steps_per_epoch)


def _prepare(
    net: nn.Module, cfg: FitConfig, regs: tuple[Regularizer, ...], extras: Extras,
    train_loader: Iterable[Any], dev: torch.device, ctx: distributed.DistContext, *,
    seed: int, progress: bool, checkpoint_dir: Any,
) -> Run:
    """Everything the epochs need: the teacher checked, the pruning steps planned, the
    loader sharded, the optimizer and scheduler, the fingerprint, the loop settings."""
    pruning, distill = extras.pruning, extras.distill
    example = _example_batch(net, train_loader, dev) if pruning is not None or distill is not None else None
    if distill is not None:
        check_teacher(distill, net, example, dev)
    if pruning is not None and pruning.example_inputs is not None:  # the caller's batch traces the model
        example = _given_example(net, pruning.example_inputs, dev)
    driver = PruningDriver(pruning, cfg.epochs, net, example, ctx) if pruning is not None else None
    train_loader = shard_train(train_loader, ctx, seed)
    steps_per_epoch = num_batches(train_loader)
    opt, sched = _optimizer_and_scheduler(net, cfg, steps_per_epoch)
    amp = amp_dtype(cfg.amp, dev)
    fingerprint = _fingerprint(cfg, regs, amp, seed=seed, world_size=ctx.world_size,
                               steps_per_epoch=steps_per_epoch)
    fingerprint.update(extras.fingerprint())
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    settings = LoopSettings(cfg.adversarial, amp, dev, cfg.clip_grad_norm, progress, cfg.epochs, ckpt_path,
                            distill=distill, channels_last=cfg.channels_last, compile_mode=compile_mode(cfg))
    state = TrainingState(net, opt, sched, regs, train_loader, torch.Generator(device=dev))
    def rebuild(epoch: int, target: nn.Module | None = None) -> tuple[Any, Any]:
        """The optimizer and scheduler after a pruning step before ``epoch``: one schedule
        over the fit, or (a restarting schedule) one over the epochs until the next step
        (over ``target``'s parameters instead of the model's: a trial copy on resume)."""
        window = None if driver is None else driver.lr_window(epoch)
        return _optimizer_and_scheduler(net if target is None else target, cfg, steps_per_epoch, window=window)

    return Run(state, settings, ctx, fingerprint, extras, rebuild=rebuild,
                steps_per_epoch=steps_per_epoch, driver=driver)


def _check_extras(
    cfg: FitConfig, pruning: Any, distill: Any, resume_from: Any, keep: Sequence[int], checkpoint_dir: Any,
) -> Extras:
    """The optional arguments, checked before anything is touched."""
    if pruning is not None:
        if not isinstance(pruning, ScheduledPruning):
            raise InvalidArgumentError(
                f"pruning must be a ScheduledPruning, got {type(pruning).__name__}.", argument="pruning"
            )
        pruning.schedule.epochs(cfg.epochs)  # every step inside the training
    if distill is not None and not isinstance(distill, DistillConfig):
        raise InvalidArgumentError(
            f"distill must be a DistillConfig, got {type(distill).__name__}.", argument="distill"
        )
    if distill is not None and distill.target == "adversarial" and cfg.adversarial is None:
        raise InvalidArgumentError(
            "distill target='adversarial' distills on the training attack's inputs, but this fit has no "
            "adversarial= training; pass adversarial=... or use target='clean'.", argument="distill")
    path = None
    if resume_from is not None:
        path = Path(resume_from)
        if not path.is_file():
            raise InvalidArgumentError(f"resume_from={str(path)!r} is not a checkpoint file.", argument="resume_from")
    keep_t = tuple(keep)
    if any(isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= cfg.epochs for e in keep_t):
        raise InvalidArgumentError(
            f"keep_checkpoints must be epochs in 1..{cfg.epochs}, got {list(keep_t)}.", argument="keep_checkpoints"
        )
    if keep_t and checkpoint_dir is None:
        raise InvalidArgumentError("keep_checkpoints needs checkpoint_dir.", argument="keep_checkpoints")
    if checkpoint_dir is not None:
        _check_checkpoint_dir(checkpoint_dir)
    return Extras(pruning, distill, path, keep_t)


def _check_checkpoint_dir(checkpoint_dir: Any) -> None:
    """Refuse a ``checkpoint_dir`` that is no path, is a file, or cannot be created (its
    nearest existing ancestor is a file or not writable) before any epoch is trained."""
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"checkpoint_dir must be a folder path or None, got {type(checkpoint_dir).__name__}.",
            argument="checkpoint_dir",
        )
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(
            f"checkpoint_dir {str(path)!r} is a file, not a folder; pass a folder path (it is "
            "created if missing).",
            argument="checkpoint_dir",
        )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "a file" if not existing.is_dir() else "not writable"
        raise InvalidArgumentError(
            f"checkpoint_dir {str(path)!r} cannot be created: {str(existing)!r} is {what}.",
            argument="checkpoint_dir",
        )


def _example_batch(net: nn.Module, loader: Iterable[Any], device: torch.device) -> torch.Tensor:
    """One input batch for tracing (pruning) and the teacher check, taken from the loader's
    dataset without iterating the loader (which would advance its shuffle RNG)."""
    dataset = getattr(loader, "dataset", None)
    try:
        first = dataset[0][0] if dataset is not None else None
    except (TypeError, IndexError, KeyError):
        first = None
    if isinstance(first, torch.Tensor):
        return check_example_inputs(first.unsqueeze(0).clone()).to(device)
    example = resolve_example_inputs(net)
    if not isinstance(example, torch.Tensor):
        raise InvalidArgumentError("pruning and distillation need a single-tensor input model.")
    return example.to(device)


def _given_example(net: nn.Module, example_inputs: Any, device: torch.device) -> torch.Tensor:
    """``ScheduledPruning.example_inputs``, on ``device``, checked to run through ``net``
    (in eval mode, without gradients) before anything is trained."""
    if not isinstance(example_inputs, torch.Tensor):
        raise InvalidArgumentError("pruning during fit needs a single-tensor input model.", argument="pruning")
    example = example_inputs.to(device)
    with eval_mode(net), torch.no_grad():
        first_forward(net, example[:1], "fit (ScheduledPruning.example_inputs)")
    return example


def _check_regularizers(regularizers: Sequence[Regularizer]) -> tuple[Regularizer, ...]:
    single = isinstance(regularizers, nn.Module) and not isinstance(regularizers, nn.ModuleList)
    if single or isinstance(regularizers, str) or not isinstance(regularizers, Iterable):
        raise InvalidArgumentError(
            f"regularizers must be a list of callables model -> scalar tensor, got "
            f"{type(regularizers).__name__}; pass regularizers=[r].",
            argument="regularizers",
        )
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
