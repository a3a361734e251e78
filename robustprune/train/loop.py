"""The training loop of :func:`robustprune.train.fit`: one epoch of updates, then the clean
test accuracy, with metrics summed over ranks and a loud stop when the loss diverges.

Per step the loss is ``L = ℓ(f, x, y) + Σ_r r(model)``: ``ℓ`` the cross-entropy on clean
inputs (standard), on PGD / FGSM-RS inputs (adversarial; the attack runs in train mode), or
the TRADES objective (its inner maximization runs in eval mode, as in the reference code);
``r`` the regularizers (computed in fp32, outside autocast).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from robustprune import distributed
from robustprune.attacks import AdversarialConfig, fgsm_rs, pgd, trades_attack, trades_objective
from robustprune.errors import InvalidArgumentError, TrainingDivergedError
from robustprune.train.distill import DistillConfig, distillation_loss
from robustprune.train.results import EpochStats
from robustprune.train.resume import TrainingState, restore_last_good
from robustprune.train.setup import num_batches

__all__ = ["LoopSettings", "Loop", "to_device"]

_CHECK_EVERY = 10  # steps between finiteness checks / progress updates (each one syncs)


@dataclass(frozen=True)
class LoopSettings:
    """How the loop trains: the adversarial attack (None: standard training), the autocast
    dtype (None: fp32), the device, gradient clipping, tqdm bars, the number of epochs (for
    the bars), the checkpoint to fall back to when the loss diverges and the distillation
    (None: none)."""

    adversarial: AdversarialConfig | None
    amp_dtype: torch.dtype | None
    device: torch.device
    clip_grad_norm: float | None
    progress: bool
    epochs: int
    checkpoint: Path | None
    distill: DistillConfig | None = None


class Loop:
    """One training epoch plus the test evaluation; holds what every step needs.

    ``ddp`` is the model the forward passes go through (the DistributedDataParallel wrapper
    under torchrun, else ``state.net`` itself); attacks and regularizers see ``state.net``.
    """

    def __init__(
        self, ddp: nn.Module, state: TrainingState, settings: LoopSettings, ctx: distributed.DistContext
    ) -> None:
        self.ddp, self.state, self.settings, self.ctx = ddp, state, settings, ctx
        self.net, self.device = state.net, settings.device
        self.progress = settings.progress and ctx.is_main

    def epoch(self, train_loader: Iterable[Any], test_loader: Iterable[Any] | None, epoch: int) -> EpochStats:
        """Train epoch ``epoch`` (from 0) and measure the test accuracy."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self.ddp.train()
        steps = num_batches(train_loader)
        # running sums on the device: [loss * n, reg * n, correct, n]
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        bar = tqdm(
            total=steps, desc=f"epoch {epoch + 1}/{self.settings.epochs}", unit="batch", leave=False,
            disable=not self.progress,
        )
        try:
            for i, batch in enumerate(train_loader):
                self._train_batch(batch, sums, epoch * steps + i + 1)
                if (i + 1) % _CHECK_EVERY == 0 or i + 1 == steps:
                    self._check_finite(sums, epoch, i)
                    if self.progress:
                        n_seen = max(1.0, float(sums[3]))
                        bar.set_postfix(
                            loss=f"{float(sums[0]) / n_seen:.4f}",
                            acc=f"{float(sums[2]) / n_seen:.2%}",
                        )
                bar.update(1)
        finally:
            bar.close()
        totals = self._reduce(sums)
        self._sync_buffers()
        test_acc = self.test_accuracy(test_loader) if test_loader is not None else None
        n = max(1.0, totals[3])
        return EpochStats(
            epoch=epoch + 1,
            loss=totals[0] / n,
            regularization=totals[1] / n,
            train_accuracy=totals[2] / n,
            test_accuracy=test_acc,
            lr=float(self.state.optimizer.param_groups[0]["lr"]),
            seconds=time.perf_counter() - start,
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer update; returns (loss, regularization, correct) as device scalars."""
        with self._autocast():
            logits, task, trained_logits, trained_x = self._task_loss(x, y)
            distill = self.settings.distill
            if distill is not None:
                with torch.no_grad():
                    teacher = distill.teacher(x if distill.target == "clean" else trained_x)
                w = float(distill.weight)
                task = (1 - w) * task + w * distillation_loss(trained_logits, teacher, distill.temperature)
        reg = sum((r(self.net) for r in self.state.regularizers), torch.zeros((), device=self.device))
        loss = task + reg
        opt = self.state.optimizer
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.settings.clip_grad_norm)
        opt.step()
        correct = (logits.detach().argmax(1) == y).sum()
        return loss.detach(), reg.detach(), correct

    def test_accuracy(self, loader: Iterable[Any]) -> float:
        """Clean accuracy on ``loader`` (this rank's shard, summed over ranks)."""
        was_training = self.net.training
        self.net.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad(), self._autocast():
            for batch in loader:
                x, y = to_device(batch, self.device)
                counts[0] += (self.net(x).argmax(1) == y).sum()
                counts[1] += y.shape[0]
        self.net.train(was_training)
        correct, n = self._reduce(counts)
        return correct / max(1.0, n)

    def _train_batch(self, batch: Any, sums: torch.Tensor, update: int) -> None:
        """One step on ``batch``, added to the running ``sums``; then the schedule."""
        x, y = to_device(batch, self.device)
        loss, reg, correct = self.step(x, y)
        n = y.shape[0]
        sums[0] += loss * n
        sums[1] += reg * n
        sums[2] += correct
        sums[3] += n
        if self.state.scheduler is not None:
            self.state.scheduler.step_update(num_updates=update)

    def _task_loss(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, ℓ, s, x')``: the logits whose accuracy is reported, the task loss
        (clean or adversarial), and the student's logits ``s`` on the inputs ``x'`` it is
        trained on (adversarial ones under adversarial training), for distillation."""
        adv, gen = self.settings.adversarial, self.state.attack_gen
        if adv is None:
            logits = self.ddp(x)
            return logits, F.cross_entropy(logits.float(), y), logits, x
        if adv.kind == "trades":
            self.net.eval()
            x_adv = trades_attack(
                self.net, x, eps=adv.eps, norm=adv.norm, steps=adv.steps,
                step_size=adv.step_size, generator=gen,
            )
            self.net.train()
            logits = self.ddp(x)
            adv_logits = self.ddp(x_adv)
            return logits, trades_objective(logits, adv_logits, y, adv.beta), adv_logits, x_adv
        if adv.kind == "pgd":
            x_adv = pgd(
                self.net, x, y, eps=adv.eps, norm=adv.norm, steps=adv.steps,
                step_size=adv.step_size, generator=gen,
            )
        else:
            x_adv = fgsm_rs(
                self.net, x, y, eps=adv.eps, norm=adv.norm, step_size=adv.step_size, generator=gen,
            )
        logits = self.ddp(x_adv)
        return logits, F.cross_entropy(logits.float(), y), logits, x_adv

    def _autocast(self) -> Any:
        amp = self.settings.amp_dtype
        return torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def _reduce(self, sums: torch.Tensor) -> list[float]:
        return [float(v) for v in distributed.sum_over_ranks(sums, self.ctx, self.device)]

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
        if not self.ctx.distributed:
            return
        for buf in self.net.buffers():
            t = buf.to(distributed.collective_device(buf.device, self.ctx))
            torch.distributed.broadcast(t, src=0)
            if t is not buf:
                buf.copy_(t)

    def _check_finite(self, sums: torch.Tensor, epoch: int, step: int) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(sums[:2]).all()) else 1.0])
        if float(distributed.sum_over_ranks(bad, self.ctx, self.device)) == 0:
            return
        lr = float(self.state.optimizer.param_groups[0]["lr"])
        where = f"epoch {epoch + 1}, step {step + 1}"
        ckpt_path = self.settings.checkpoint
        good_epoch = restore_last_good(ckpt_path, self.net, self.device)
        if good_epoch is not None:
            raise TrainingDivergedError(
                f"The training loss became NaN or infinite ({where}, lr={lr:g}). The model was "
                f"restored to the last good checkpoint {ckpt_path} (after epoch "
                f"{good_epoch}). Lower lr, add clip_grad_norm=..., or check the "
                "regularizer weights; delete the checkpoint to start over."
            )
        raise TrainingDivergedError(
            f"The training loss became NaN or infinite ({where}, lr={lr:g}); the model's "
            "weights are no longer usable. Lower lr, add clip_grad_norm=..., or check the "
            "regularizer weights; pass checkpoint_dir= to keep the last good epoch."
        )


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of a batch on ``device`` (labels as int64)."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise InvalidArgumentError(
            f"Expected (inputs, labels) batches, got {type(batch).__name__}."
        )
    return (
        batch[0].to(device, non_blocking=True),
        batch[1].to(device, torch.long, non_blocking=True),
    )
