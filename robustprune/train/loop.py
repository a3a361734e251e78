"""The training loop of :func:`robustprune.train.fit`: one epoch of updates, then the clean
test accuracy, with metrics summed over ranks and a loud stop when the loss diverges.

Every batch is checked before it is used (:class:`~robustprune._inputs.BatchValidator`);
before the first update, one eval-mode forward of one example (the RNG isolated) tells the
model's number of outputs, so labels are checked against it before any train-mode forward.
The loss of every step is checked before ``optimizer.step()``: a NaN or infinite loss stops
the fit with the step's epoch, batch and learning rate, the running statistics that step's
forward changed are put back, and no non-finite update is ever applied.

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
from robustprune._inputs import BatchValidator, check_logits, first_forward, split_labelled_batch
from robustprune._modes import eval_mode
from robustprune._progress import NoBar
from robustprune._progress import bar as progress_bar
from robustprune.attacks import AdversarialConfig, trades_objective
from robustprune.attacks.training import (
    check_budget_for_inputs,
    pgd_unchecked,
    trades_attack_unchecked,
)
from robustprune.errors import InvalidArgumentError, TrainingDivergedError
from robustprune.train.distill import DistillConfig, distillation_loss
from robustprune.train.results import EpochStats
from robustprune.train.resume import TrainingState, restore_last_good
from robustprune.train.setup import num_batches

__all__ = ["LoopSettings", "Loop", "RunningStats", "regularizer_names", "to_device"]

_PROGRESS_EVERY = 10  # steps between progress-bar updates (each one syncs)


@dataclass(frozen=True)
class LoopSettings:
    """How the loop trains: the adversarial attack (None: standard training), the autocast
    dtype (None: fp32), the device, gradient clipping, progress bars, the number of epochs (for
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
    channels_last: bool = False  # model and batches in the channels-last memory format
    compile_mode: str | None = None  # torch.compile mode of the training forward (None: eager)


class Loop:
    """One training epoch plus the test evaluation; holds what every step needs.

    ``ddp`` is the model the forward passes go through (the DistributedDataParallel wrapper
    under torchrun, else ``state.net`` itself); ``attacker`` the model the training attacks
    go through (``state.net``, compiled when the forward is); regularizers see ``state.net``.
    """

    def __init__(
        self, ddp: nn.Module, attacker: nn.Module, state: TrainingState, settings: LoopSettings,
        ctx: distributed.DistContext, *, resumed_from: int = 0,
    ) -> None:
        self.ddp, self.attacker, self.state, self.settings, self.ctx = ddp, attacker, state, settings, ctx
        self.net, self.device = state.net, settings.device
        self.progress = settings.progress and ctx.is_main
        self.resumed_from = resumed_from
        self.check = BatchValidator("fit's train loader")
        self.test_check = BatchValidator("fit's test loader")
        self.last_update: tuple[int, int] | None = None  # (epoch, batch) of the last update
        self.guard = RunningStats(self.net)
        self.terms: list[torch.Tensor] = []  # the regularizers' values of the last step

    def epoch(self, train_loader: Iterable[Any], test_loader: Iterable[Any] | None, epoch: int) -> EpochStats:
        """Train epoch ``epoch`` (from 0) and measure the test accuracy."""
        start = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self.ddp.train()
        steps = num_batches(train_loader)
        # running sums on the device: [loss * n, reg * n, correct, n, term_1 * n, ...]
        names = regularizer_names(self.state.regularizers)
        sums = torch.zeros(4 + len(names), dtype=torch.float64, device=self.device)
        bar = progress_bar(
            total=steps, desc=f"epoch {epoch + 1}/{self.settings.epochs}", unit="batch", leave=False,
            enabled=self.progress,
        )
        live = not isinstance(bar, NoBar)  # off a terminal: no bar, one line per epoch (epochs.py)
        self.guard = RunningStats(self.net)  # the model may have been pruned before this epoch
        try:
            for i, batch in enumerate(train_loader):
                self._train_batch(batch, sums, epoch, i, epoch * steps + i + 1)
                if live and ((i + 1) % _PROGRESS_EVERY == 0 or i + 1 == steps):
                    n_seen = max(1.0, float(sums[3]))
                    bar.set_postfix(
                        loss=f"{float(sums[0]) / n_seen:.4f}", acc=f"{float(sums[2]) / n_seen:.2%}",
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
            regularization_terms={name: totals[4 + j] / n for j, name in enumerate(names)},
        )

    def step(
        self, x: torch.Tensor, y: torch.Tensor, where: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer update; returns (loss, regularization, correct) as device scalars.
        A regularizer that returns no scalar tensor, or a NaN or infinite loss, stops before
        ``optimizer.step()`` with the running statistics of this step's forward put back."""
        self.guard.save()
        try:
            with self._autocast():
                logits, task, trained_logits, trained_x = self._task_loss(x, y)
                distill = self.settings.distill
                if distill is not None:
                    with torch.no_grad():
                        teacher = distill.teacher(x if distill.target == "clean" else trained_x)
                    w = float(distill.weight)
                    task = (1 - w) * task + w * distillation_loss(trained_logits, teacher, distill.temperature)
            reg = self._regularization(where)
            loss = task + reg
        except InvalidArgumentError:
            self.guard.restore()
            raise
        self._check_loss(loss, where)
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
        counts = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.test_check.classes = self.check.classes
        try:
            with eval_mode(self.net), torch.no_grad(), self._autocast():
                for i, batch in enumerate(loader):
                    x, y = self.test_check.split(batch, f"batch {i + 1}")
                    x, y = to_device((x, y), self.device)
                    counts[0] += (self.net(x).argmax(1) == y).sum()
                    counts[1] += y.shape[0]
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"{exc} The test accuracy is measured after the epoch's updates: {self.where_now()}.",
                argument=exc.argument,
            ) from exc
        correct, n = self._reduce(counts)
        return correct / max(1.0, n)

    def _train_batch(self, batch: Any, sums: torch.Tensor, epoch: int, i: int, update: int) -> None:
        """One step on ``batch`` (checked first), added to the running ``sums``; then the schedule."""
        where = f"epoch {epoch + 1}, batch {i + 1}"
        try:
            x, y = self.check.split(batch, where)
            if self.check.classes is None:
                self._first_batch(x, where)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"{exc} fit stopped before using this batch: {self.where_now()}.", argument=exc.argument
            ) from exc
        x, y = to_device((x, y), self.device)
        if self.settings.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, reg, correct = self.step(x, y, where)
        self.last_update = (epoch + 1, i + 1)
        n = y.shape[0]
        sums[0] += loss * n
        sums[1] += reg * n
        sums[2] += correct
        sums[3] += n
        for j, term in enumerate(self.terms):
            sums[4 + j] += term * n
        if self.state.scheduler is not None:
            self.state.scheduler.step_update(num_updates=update)

    def _first_batch(self, x: torch.Tensor, where: str) -> None:
        """Before the first update: the model's number of outputs from an eval-mode forward
        of one example (no gradients, the RNG isolated, nothing changed), the labels checked
        against it, an L2 training budget against the input size."""
        devices = [self.device] if self.device.type == "cuda" else []
        with eval_mode(self.net), torch.random.fork_rng(devices=devices), torch.no_grad(), self._autocast():
            out = first_forward(self.net, x[:1].to(self.device), f"fit ({where})")
        classes = check_logits(out, 1, what="fit's model", where=where, finite=False)
        if classes < 2:
            raise InvalidArgumentError(
                f"fit trains with cross-entropy over the model's logits, but the model has {classes} output "
                "(the loss would always be 0): build it with num_classes >= 2, one logit per class.",
                argument="model")
        self.check.set_classes(classes)
        adv = self.settings.adversarial
        if adv is not None:
            check_budget_for_inputs(adv.eps, adv.norm, x.shape[1:])

    def where_now(self) -> str:
        """What the model holds when the fit stops now (for error messages)."""
        if self.last_update is not None:
            epoch, batch = self.last_update
            return f"the model holds the weights of the last good update (epoch {epoch}, batch {batch})"
        if self.resumed_from:
            return (f"no update was made; the model holds the weights of the checkpoint it resumed "
                    f"from (after epoch {self.resumed_from})")
        return "no update was made; the model is unchanged"

    def _regularization(self, where: str) -> torch.Tensor:
        """The sum of the regularizers' values, each checked to be a scalar tensor."""
        total = torch.zeros((), device=self.device)
        self.terms = []
        for r in self.state.regularizers:
            value = r(self.net)
            if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()):
                got = (f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                       else f"a {type(value).__name__}")
                name = type(r).__name__ if isinstance(r, nn.Module) else getattr(r, "__qualname__", type(r).__name__)
                raise InvalidArgumentError(
                    f"The regularizer {name} returned {got} ({where}); a regularizer must "
                    "return a floating-point scalar tensor computed from the model's parameters "
                    f"(e.g. weight * penalty), which is added to the loss. fit stopped before this "
                    f"update: {self.where_now()}.",
                    argument="regularizers",
                )
            total = total + value
            self.terms.append(value.detach())
        return total

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
            x_adv = trades_attack_unchecked(  # fit's batches are checked once, not per attack
                self.attacker, x, eps=adv.eps, norm=adv.norm, steps=adv.steps,
                step_size=adv.step_size, generator=gen,
            )
            self.net.train()
            logits = self.ddp(x)
            adv_logits = self.ddp(x_adv)
            return logits, trades_objective(logits, adv_logits, y, adv.beta), adv_logits, x_adv
        if adv.kind == "pgd":
            x_adv = pgd_unchecked(
                self.attacker, x, y, eps=adv.eps, norm=adv.norm, steps=adv.steps,
                step_size=adv.step_size, generator=gen,
            )
        else:  # FGSM with a random start: one step of 1.25 eps by default (fgsm_rs)
            x_adv = pgd_unchecked(
                self.attacker, x, y, eps=adv.eps, norm=adv.norm, steps=1, random_start=True,
                step_size=1.25 * adv.eps if adv.step_size is None else adv.step_size, generator=gen,
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

    def _check_loss(self, loss: torch.Tensor, where: str) -> None:
        """Stop before the update when the loss of this step (on any rank) is not finite."""
        bad = (~torch.isfinite(loss.detach())).any().reshape(1).double()
        if self.ctx.distributed:
            diverged = float(distributed.sum_over_ranks(bad, self.ctx, self.device)) > 0
        else:
            diverged = bool(bad)
        if not diverged:
            return
        self.guard.restore()
        lr = float(self.state.optimizer.param_groups[0]["lr"])
        at = f"{where}, lr={lr:g}; detected before the update, which was not applied"
        ckpt_path = self.settings.checkpoint
        good_epoch = restore_last_good(ckpt_path, self.net, self.device)
        if good_epoch is not None:
            raise TrainingDivergedError(
                f"The training loss became NaN or infinite ({at}). The model was "
                f"restored to the last good checkpoint {ckpt_path} (after epoch "
                f"{good_epoch}). Lower lr, add clip_grad_norm=..., or check the "
                "regularizer weights; delete the checkpoint to start over."
            )
        raise TrainingDivergedError(
            f"The training loss became NaN or infinite ({at}); {self.where_now()}. Lower lr, add "
            "clip_grad_norm=..., or check the data and the regularizer weights; pass "
            "checkpoint_dir= to keep the last good epoch."
        )


class RunningStats:
    """The buffers a train-mode forward changes (the running statistics of the modules with
    ``track_running_stats``), saved before each step, one copy per dtype, so that a refused
    step can put them back."""

    def __init__(self, net: nn.Module) -> None:
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for module in net.modules():
            if getattr(module, "track_running_stats", False):
                for buf in module.buffers(recurse=False):
                    if buf is not None:
                        groups.setdefault(buf.dtype, []).append(buf)
        self.groups = list(groups.values())
        self.saved: list[torch.Tensor] = []

    def save(self) -> None:
        with torch.no_grad():
            self.saved = [torch.cat([b.reshape(-1) for b in group]) for group in self.groups]

    def restore(self) -> None:
        with torch.no_grad():
            for group, flat in zip(self.groups, self.saved):
                offset = 0
                for buf in group:
                    buf.copy_(flat[offset : offset + buf.numel()].view_as(buf))
                    offset += buf.numel()


def regularizer_names(regularizers: Iterable[Any]) -> list[str]:
    """A name per regularizer for the logs: its class (or function) name, ``#2``, ``#3``...
    appended when several share one."""
    names: list[str] = []
    for r in regularizers:
        base = type(r).__name__ if isinstance(r, nn.Module) else getattr(r, "__qualname__", type(r).__name__)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}#{k}"
        names.append(name)
    return names


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of a batch on ``device`` (labels as int64)."""
    batch = split_labelled_batch(batch)
    return (
        batch[0].to(device, non_blocking=True),
        batch[1].to(device, torch.long, non_blocking=True),
    )
