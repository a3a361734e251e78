"""The epochs of one :func:`robustprune.train.fit` call: resume (or seed every RNG), then
per epoch the scheduled pruning steps (the optimizer and scheduler rebuilt after them), the
training epoch and its checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune import distributed
from robustprune._progress import line as progress_line
from robustprune.pruners.schedules import ScheduledPruning, extend_history
from robustprune.train.distill import DistillConfig
from robustprune.train.loggers import Logger
from robustprune.train.loop import Loop, LoopSettings
from robustprune.train.pruning import PruningDriver
from robustprune.train.results import EpochStats
from robustprune.train.resume import (
    TrainingState,
    check_resumable,
    keep_copy,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from robustprune.train.rng import seed_everything

__all__ = ["Extras", "Run"]

logger = logging.getLogger("robustprune.train.fitting")


@dataclasses.dataclass(frozen=True)
class Extras:
    """The optional arguments of one fit call that shape its checkpoints."""

    pruning: ScheduledPruning | None
    distill: DistillConfig | None
    resume_from: Path | None
    keep: tuple[int, ...]

    def fingerprint(self) -> dict[str, Any]:
        """Fingerprint entries, present only when used (old checkpoints keep resuming)."""
        out: dict[str, Any] = {}
        if self.pruning is not None:
            out["pruning"] = self.pruning.describe()
        if self.distill is not None:
            out["distill"] = self.distill.describe()
        return out


class Run:
    """The epochs of one fit: resume (or seed), then per epoch the scheduled pruning
    steps, the training epoch, its checkpoint."""

    def __init__(
        self, state: TrainingState, settings: LoopSettings, ctx: distributed.DistContext,
        fingerprint: dict[str, Any], extras: Extras, *, rebuild: Callable[..., tuple[Any, Any]],
        steps_per_epoch: int, driver: PruningDriver | None,
    ) -> None:
        self.state, self.settings, self.ctx = state, settings, ctx
        self.fingerprint, self.extras, self.rebuild = fingerprint, extras, rebuild
        self.steps_per_epoch, self.driver = steps_per_epoch, driver

    def epochs(
        self, test_loader: Iterable[Any] | None, *, seed: int,
        on_epoch_end: Callable[[EpochStats], None] | None, loggers: Sequence[Logger] = (),
    ) -> tuple[list[EpochStats], int]:
        """Train the remaining epochs; the history and the epoch it resumed from. Rank 0
        hands every epoch to the ``loggers`` (on resume, the restored epochs first)."""
        state, settings = self.state, self.settings
        history, start_epoch = self._start(seed)
        loggers = tuple(loggers) if self.ctx.is_main else ()
        for stats in history:
            for log in loggers:
                log.log_epoch(stats)
        loop = Loop(*self._wrap(), state, settings, self.ctx, resumed_from=start_epoch)
        for epoch in range(start_epoch, settings.epochs):
            if self._prune(epoch):
                loop.ddp, loop.attacker = self._wrap()
            stats = loop.epoch(state.loader, test_loader, epoch)
            history.append(stats)
            if settings.checkpoint is not None:
                save_checkpoint(settings.checkpoint, epoch + 1, state, history, self.fingerprint, self.ctx)
                if epoch + 1 in self.extras.keep and self.ctx.is_main:
                    keep_copy(settings.checkpoint, epoch + 1)
            progress_line(
                logger, "epoch %d/%d: loss %.4f, train acc %.2f%%, test acc %s, %.1fs",
                stats.epoch, settings.epochs, stats.loss, 100 * stats.train_accuracy,
                "-" if stats.test_accuracy is None else f"{100 * stats.test_accuracy:.2f}%",
                stats.seconds, enabled=self._talks(),
            )
            for log in loggers:
                log.log_epoch(stats)
            if on_epoch_end is not None:
                on_epoch_end(stats)
        return history, start_epoch

    def _start(self, seed: int) -> tuple[list[EpochStats], int]:
        """Resume from the checkpoint (or ``resume_from``), or seed every RNG."""
        state, dev, path = self.state, self.settings.device, self.settings.checkpoint
        source = path if path is not None and path.exists() else self.extras.resume_from
        prune_epochs = () if self.driver is None else self.driver.epochs_at
        saved = load_checkpoint(source, self.fingerprint, dev, prune_epochs=prune_epochs) if source else None
        if saved is None:
            seed_everything(seed, self.ctx.rank, dev, state.attack_gen)
            return [], 0
        if saved.get("pruning_history"):
            # every shape is checked on a pruned copy first: a refused resume changes nothing
            trial = copy.deepcopy(state.net)
            extend_history(trial, saved["pruning_history"])
            trial.to(dev)
            check_resumable(saved, trial, self.rebuild(int(saved["epoch"]), trial)[0], state.regularizers)
            del trial
            extend_history(state.net, saved["pruning_history"])
            state.net.to(dev)
            state.optimizer, state.scheduler = self.rebuild(int(saved["epoch"]))
        else:
            check_resumable(saved, state.net, state.optimizer, state.regularizers)
        history = restore(saved, state, self.ctx)
        progress_line(logger, "resuming from %s after epoch %d", source, int(saved["epoch"]), enabled=self._talks())
        return history, int(saved["epoch"])

    def _talks(self) -> bool:
        """Whether this process writes progress lines (rank 0, ``progress=True``)."""
        return self.settings.progress and self.ctx.is_main

    def _prune(self, epoch: int) -> bool:
        """Run the pruning steps scheduled before ``epoch``; whether the model changed."""
        if self.driver is None:
            return False
        changed = False
        for step in self.driver.steps_at(epoch):
            changed |= self.driver.run(self.state.net, step) is not None
        if changed:
            self.state.optimizer, self.state.scheduler = self.rebuild(epoch)
            if self.state.scheduler is not None:
                self.state.scheduler.step_update(num_updates=epoch * self.steps_per_epoch)
        return changed

    def _wrap(self) -> tuple[nn.Module, nn.Module]:
        """``(forward, attacker)``: the module the training forwards go through (the model,
        channels-last if asked, wrapped in DistributedDataParallel under torchrun, compiled
        if asked) and the one the training attacks go through (the same model compiled the
        same way, without the DDP wrapper: an attack's input gradients must not start DDP's
        gradient reduction). The attacks are most of a PGD step's work, so under adversarial
        training they are compiled too."""
        net, dev, mode = self.state.net, self.settings.device, self.settings.compile_mode
        if self.settings.channels_last:
            net.to(memory_format=torch.channels_last)
        attacker = net if mode is None or self.settings.adversarial is None else torch.compile(net, mode=mode)
        if self.ctx.distributed:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
        if mode is not None:
            net = torch.compile(net, mode=mode)
        return net, attacker
