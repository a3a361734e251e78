"""``fit``: standard and adversarial training or finetuning, with regularizers, bf16 AMP,
DistributedDataParallel, and checkpoints that resume bit-for-bit.

>>> loaders = create_loaders("digits", batch_size=64)
>>> result = fit(model, loaders, epochs=10, lr=0.05)                       # standard training
>>> adv = AdversarialConfig(kind="pgd", eps=0.1, steps=10)
>>> fit(model, loaders, epochs=3, lr=0.01, adversarial=adv, regularizers=[BetaDispersion(0.1)])

Per step the loss is

``L = ℓ(f, x, y) + Σ_r r(model)``

with ``ℓ`` the cross-entropy on clean inputs (standard), on PGD / FGSM-RS inputs
(adversarial, Madry et al. / Wong et al.; the attack runs in train mode), or the TRADES
objective (its inner maximization runs in eval mode, as in the reference code), and
``r`` the regularizers (computed in fp32, outside autocast).

The optimizer and the scheduler come from timm's factories and are built from the model's
*current* parameters at every call, so a model pruned between two calls never leaves the
optimizer holding stale tensors. The schedule is stepped per update.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from robustprune import distributed
from robustprune.attacks import AdversarialConfig, fgsm_rs, pgd, trades_attack, trades_objective
from robustprune.errors import InvalidArgumentError, TrainingDivergedError

__all__ = ["FitConfig", "SCHEDULERS", "EpochStats", "FitResult", "fit", "CHECKPOINT_NAME"]

logger = logging.getLogger(__name__)

#: file name of the rolling checkpoint inside ``checkpoint_dir``
CHECKPOINT_NAME = "last.pt"
_FORMAT = 1
_CHECK_EVERY = 10  # steps between finiteness checks / progress updates (each one syncs)

AmpMode = Literal["auto", "bf16", "off"] | bool


@dataclass(frozen=True)
class EpochStats:
    """One epoch of :func:`fit` (``epoch`` counts from 1).

    ``loss`` is the mean total loss (task loss + regularizers) over the epoch's examples,
    ``regularization`` the mean regularizer part; ``train_accuracy`` is measured on the
    inputs trained on (adversarial ones under adversarial training, clean ones for
    TRADES); ``test_accuracy`` is clean accuracy on the test loader (None without one).
    """

    epoch: int
    loss: float
    regularization: float
    train_accuracy: float
    test_accuracy: float | None
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did: the per-epoch history and the final accuracies."""

    history: tuple[EpochStats, ...]
    final_train_accuracy: float | None
    final_test_accuracy: float | None
    epochs: int
    resumed_from_epoch: int
    checkpoint: str | None
    device: str
    amp: str
    world_size: int
    adversarial: AdversarialConfig | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field."""
        return {
            "history": [h.to_dict() for h in self.history],
            "final_train_accuracy": self.final_train_accuracy,
            "final_test_accuracy": self.final_test_accuracy,
            "epochs": self.epochs,
            "resumed_from_epoch": self.resumed_from_epoch,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "amp": self.amp,
            "world_size": self.world_size,
            "adversarial": None if self.adversarial is None else dataclasses.asdict(self.adversarial),
        }


Regularizer = Callable[[nn.Module], torch.Tensor]

#: learning-rate schedules of ``timm.scheduler.create_scheduler_v2`` that ``fit`` accepts
#: (stepped per update); ``None`` or ``"none"`` keeps the learning rate constant
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant")
#: the ``amp`` settings of :class:`FitConfig`
AMP_MODES = ("auto", "bf16", "off")


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """The hyperparameters of one :func:`fit` call, validated once, here.

    ``fit(model, loaders, FitConfig(epochs=20, lr=0.05))`` and
    ``fit(model, loaders, epochs=20, lr=0.05)`` are the same call; keyword arguments given
    next to a config override its fields. Recipes build their ``[train]`` and
    ``[finetune]`` sections from the same class.

    Attributes:
        epochs: number of epochs (the schedule spans them).
        lr, optimizer, weight_decay, momentum: passed to ``timm.optim.create_optimizer_v2``
            (``optimizer`` is a timm name: "sgd", "adamw", "lamb"...; biases and norm layers
            get no weight decay).
        scheduler, warmup_epochs, min_lr: passed to ``timm.scheduler.create_scheduler_v2``
            (one of :data:`SCHEDULERS`; None or "none" keeps ``lr``).
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
        amp: "auto" (bf16 autocast on CUDA where supported, fp32 elsewhere), "bf16"/True,
            or "off"/False.
        adversarial: None (standard training) or an
            :class:`~robustprune.attacks.AdversarialConfig` (a dict of its fields is
            converted): PGD, FGSM-RS or TRADES.
        optimizer_kwargs, scheduler_kwargs: extra keyword arguments for timm's factories.
    """

    epochs: int
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    scheduler: str | None = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    clip_grad_norm: float | None = None
    amp: str | bool = "auto"
    adversarial: AdversarialConfig | None = None
    optimizer_kwargs: Mapping[str, Any] | None = None
    scheduler_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 0)
        _check_real("lr", self.lr, low=0.0, strict=True)
        _check_real("weight_decay", self.weight_decay, low=0.0)
        _check_real("momentum", self.momentum, low=0.0)
        _check_int("warmup_epochs", self.warmup_epochs, 0)
        _check_real("min_lr", self.min_lr, low=0.0)
        if self.clip_grad_norm is not None:
            _check_real("clip_grad_norm", self.clip_grad_norm, low=0.0, strict=True)
        _check_factory_names(self.optimizer, self.scheduler)
        if not (isinstance(self.amp, bool) or self.amp in AMP_MODES):
            raise InvalidArgumentError(
                f"amp must be one of {', '.join(AMP_MODES)} (or True/False), got {self.amp!r}.",
                argument="amp",
            )
        object.__setattr__(self, "adversarial", _as_adversarial(self.adversarial))
        for name in ("optimizer_kwargs", "scheduler_kwargs"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise InvalidArgumentError(
                    f"{name} must be a dict of keyword arguments or None, got {type(value).__name__}.",
                    argument=name,
                )

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The field names, in order (what ``fit`` accepts as keyword overrides)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> FitConfig:
        """A copy with ``changes`` applied (validated again)."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise InvalidArgumentError(
                f"Unknown fit option(s) {', '.join(unknown)}; FitConfig has {', '.join(self.fields())}.",
                argument=unknown[0],
            )
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}.", argument=name)


def _check_real(name: str, value: Any, *, low: float, strict: bool = False) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(float(value))
        and (float(value) > low if strict else float(value) >= low)
    )
    if not ok:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise InvalidArgumentError(f"{name} must be a finite number {bound}, got {value!r}.", argument=name)


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
    cfg = _resolve_config(config, options)
    epochs, lr, optimizer = cfg.epochs, cfg.lr, cfg.optimizer
    weight_decay, momentum, scheduler = cfg.weight_decay, cfg.momentum, cfg.scheduler
    warmup_epochs, min_lr, amp = cfg.warmup_epochs, cfg.min_lr, cfg.amp
    clip_grad_norm, adv = cfg.clip_grad_norm, cfg.adversarial
    optimizer_kwargs, scheduler_kwargs = cfg.optimizer_kwargs, cfg.scheduler_kwargs
    regs = tuple(regularizers)
    for r in regs:
        if not callable(r):
            raise InvalidArgumentError(
                f"regularizers must be callables model -> scalar tensor, got {type(r).__name__}."
            )
    train_loader, test_loader = _split_loaders(loaders)
    dev = distributed.resolve_device(device)
    amp_dtype = _amp_dtype(amp, dev)
    ctx = distributed.setup(dev)
    net = distributed.unwrap(model)
    was_training = net.training
    net.to(dev)
    for r in regs:
        if isinstance(r, nn.Module):
            r.to(dev)
    train_loader = _shard_train(train_loader, ctx, seed)
    test_loader = _shard_test(test_loader, ctx)
    steps_per_epoch = _num_batches(train_loader)

    opt = _create_optimizer(net, optimizer, lr, weight_decay, momentum, optimizer_kwargs)
    sched = _create_scheduler(
        opt, scheduler, epochs, warmup_epochs, min_lr, steps_per_epoch, scheduler_kwargs
    )
    fingerprint = {
        "epochs": epochs, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
        "momentum": momentum, "scheduler": scheduler, "warmup_epochs": warmup_epochs,
        "min_lr": min_lr, "adversarial": None if adv is None else dataclasses.asdict(adv),
        "regularizers": [type(r).__name__ for r in regs], "amp": str(amp_dtype),
        "seed": seed, "world_size": ctx.world_size, "steps_per_epoch": steps_per_epoch,
        "clip_grad_norm": clip_grad_norm,
        "optimizer_kwargs": repr(sorted(dict(optimizer_kwargs or {}).items())),
        "scheduler_kwargs": repr(sorted(dict(scheduler_kwargs or {}).items())),
    }
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    cuda_devices = [dev] if dev.type == "cuda" else []
    caller_np, caller_py = np.random.get_state(), random.getstate()
    ddp: nn.Module = net
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            attack_gen = torch.Generator(device=dev)
            state = _load_checkpoint(ckpt_path, fingerprint, dev) if ckpt_path else None
            if state is None:
                _seed_everything(seed, ctx.rank, dev, attack_gen)
                history: list[EpochStats] = []
                start_epoch = 0
            else:
                history = _restore(state, net, opt, sched, regs, train_loader, attack_gen, ctx)
                start_epoch = int(state["epoch"])
                logger.info("resuming from %s after epoch %d", ckpt_path, start_epoch)
            if ctx.distributed:
                ddp = nn.parallel.DistributedDataParallel(
                    net, device_ids=[dev.index] if dev.type == "cuda" else None
                )
            loop = _Loop(
                ddp, net, opt, sched, adv, regs, amp_dtype, dev, ctx, attack_gen,
                clip_grad_norm, progress,
            )
            for epoch in range(start_epoch, epochs):
                stats = loop.epoch(train_loader, test_loader, epoch, epochs, ckpt_path, history)
                history.append(stats)
                if ckpt_path is not None:
                    _save_checkpoint(
                        ckpt_path, epoch + 1, net, opt, sched, regs, train_loader, attack_gen,
                        history, fingerprint, ctx,
                    )
                logger.info(
                    "epoch %d/%d: loss %.4f, train acc %.2f%%, test acc %s, %.1fs",
                    stats.epoch, epochs, stats.loss, 100 * stats.train_accuracy,
                    "-" if stats.test_accuracy is None else f"{100 * stats.test_accuracy:.2f}%",
                    stats.seconds,
                )
                if on_epoch_end is not None:
                    on_epoch_end(stats)
    finally:
        np.random.set_state(caller_np)
        random.setstate(caller_py)
        del ddp
        net.train(was_training)
    last = history[-1] if history else None
    return FitResult(
        history=tuple(history),
        final_train_accuracy=None if last is None else last.train_accuracy,
        final_test_accuracy=None if last is None else last.test_accuracy,
        epochs=epochs,
        resumed_from_epoch=0 if state is None else int(state["epoch"]),
        checkpoint=None if ckpt_path is None else str(ckpt_path),
        device=str(dev),
        amp="off" if amp_dtype is None else "bf16",
        world_size=ctx.world_size,
        adversarial=adv,
    )


# --------------------------------------------------------------------------- the loop


class _Loop:
    """One training epoch plus the test evaluation; holds what every step needs."""

    def __init__(
        self,
        ddp: nn.Module,
        net: nn.Module,
        opt: torch.optim.Optimizer,
        sched: Any,
        adv: AdversarialConfig | None,
        regs: tuple[Regularizer, ...],
        amp_dtype: torch.dtype | None,
        device: torch.device,
        ctx: distributed.DistContext,
        attack_gen: torch.Generator,
        clip_grad_norm: float | None,
        progress: bool,
    ) -> None:
        self.ddp, self.net, self.opt, self.sched = ddp, net, opt, sched
        self.adv, self.regs, self.amp_dtype, self.device = adv, regs, amp_dtype, device
        self.ctx, self.attack_gen, self.clip = ctx, attack_gen, clip_grad_norm
        self.progress = progress and ctx.is_main

    def _autocast(self) -> Any:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer update; returns (loss, regularization, correct) as device scalars."""
        adv = self.adv
        with self._autocast():
            if adv is None:
                logits = self.ddp(x)
                task = F.cross_entropy(logits.float(), y)
            elif adv.kind == "trades":
                self.net.eval()
                x_adv = trades_attack(
                    self.net, x, eps=adv.eps, norm=adv.norm, steps=adv.steps,
                    step_size=adv.step_size, generator=self.attack_gen,
                )
                self.net.train()
                logits = self.ddp(x)
                task = trades_objective(logits, self.ddp(x_adv), y, adv.beta)
            else:
                if adv.kind == "pgd":
                    x_adv = pgd(
                        self.net, x, y, eps=adv.eps, norm=adv.norm, steps=adv.steps,
                        step_size=adv.step_size, generator=self.attack_gen,
                    )
                else:
                    x_adv = fgsm_rs(
                        self.net, x, y, eps=adv.eps, norm=adv.norm, step_size=adv.step_size,
                        generator=self.attack_gen,
                    )
                logits = self.ddp(x_adv)
                task = F.cross_entropy(logits.float(), y)
        reg = sum((r(self.net) for r in self.regs), torch.zeros((), device=self.device))
        loss = task + reg
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        correct = (logits.detach().argmax(1) == y).sum()
        return loss.detach(), reg.detach(), correct

    def epoch(
        self,
        train_loader: Iterable[Any],
        test_loader: Iterable[Any] | None,
        epoch: int,
        epochs: int,
        ckpt_path: Path | None,
        history: list[EpochStats],
    ) -> EpochStats:
        from tqdm.auto import tqdm

        start = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self.ddp.train()
        steps = _num_batches(train_loader)
        # running sums on the device: [loss * n, reg * n, correct, n]
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        bar = tqdm(
            total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
            disable=not self.progress,
        )
        try:
            for i, batch in enumerate(train_loader):
                x, y = _to_device(batch, self.device)
                loss, reg, correct = self.step(x, y)
                n = y.shape[0]
                sums[0] += loss * n
                sums[1] += reg * n
                sums[2] += correct
                sums[3] += n
                if self.sched is not None:
                    self.sched.step_update(num_updates=epoch * steps + i + 1)
                if (i + 1) % _CHECK_EVERY == 0 or i + 1 == steps:
                    self._check_finite(sums, epoch, i, ckpt_path, history)
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
            lr=float(self.opt.param_groups[0]["lr"]),
            seconds=time.perf_counter() - start,
        )

    def test_accuracy(self, loader: Iterable[Any]) -> float:
        """Clean accuracy on ``loader`` (this rank's shard, summed over ranks)."""
        was_training = self.net.training
        self.net.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad(), self._autocast():
            for batch in loader:
                x, y = _to_device(batch, self.device)
                counts[0] += (self.net(x).argmax(1) == y).sum()
                counts[1] += y.shape[0]
        self.net.train(was_training)
        correct, n = self._reduce(counts)
        return correct / max(1.0, n)

    def _reduce(self, sums: torch.Tensor) -> list[float]:
        if self.ctx.distributed:
            backend = torch.distributed.get_backend()
            t = sums if backend == "nccl" else sums.cpu()
            distributed.all_reduce_sum(t, self.ctx)
            return [float(v) for v in t.cpu()]
        return [float(v) for v in sums.cpu()]

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
        if not self.ctx.distributed:
            return
        backend = torch.distributed.get_backend()
        for buf in self.net.buffers():
            t = buf if backend == "nccl" or buf.device.type == "cpu" else buf.cpu()
            torch.distributed.broadcast(t, src=0)
            if t is not buf:
                buf.copy_(t)

    def _check_finite(
        self, sums: torch.Tensor, epoch: int, step: int, ckpt_path: Path | None,
        history: list[EpochStats],
    ) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(sums[:2]).all()) else 1.0])
        if self.ctx.distributed:
            t = bad.to(self.device) if torch.distributed.get_backend() == "nccl" else bad
            distributed.all_reduce_sum(t, self.ctx)
            bad = t.cpu()
        if float(bad) == 0:
            return
        lr = float(self.opt.param_groups[0]["lr"])
        where = f"epoch {epoch + 1}, step {step + 1}"
        if ckpt_path is not None and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=self.device, weights_only=True)
            self.net.load_state_dict(state["model"])
            raise TrainingDivergedError(
                f"The training loss became NaN or infinite ({where}, lr={lr:g}). The model was "
                f"restored to the last good checkpoint {ckpt_path} (after epoch "
                f"{state['epoch']}). Lower lr, add clip_grad_norm=..., or check the "
                "regularizer weights; delete the checkpoint to start over."
            )
        raise TrainingDivergedError(
            f"The training loss became NaN or infinite ({where}, lr={lr:g}); the model's "
            "weights are no longer usable. Lower lr, add clip_grad_norm=..., or check the "
            "regularizer weights; pass checkpoint_dir= to keep the last good epoch."
        )


# --------------------------------------------------------------------------- set-up helpers


def _resolve_config(config: FitConfig | int | None, options: Mapping[str, Any]) -> FitConfig:
    """The :class:`FitConfig` of a ``fit`` call: ``config`` (or ``epochs=config``) with
    the keyword ``options`` applied."""
    unknown = sorted(set(options) - set(FitConfig.fields()))
    if unknown:
        raise InvalidArgumentError(
            f"fit() got unknown option(s) {', '.join(unknown)}; it accepts the FitConfig fields "
            f"{', '.join(FitConfig.fields())} and regularizers, device, checkpoint_dir, seed, "
            "progress, on_epoch_end.",
            argument=unknown[0],
        )
    if isinstance(config, FitConfig):
        return config.replace(**options) if options else config
    if config is not None:
        if "epochs" in options:
            raise InvalidArgumentError("fit() got epochs twice (positionally and as epochs=).")
        options = {**options, "epochs": config}
    if "epochs" not in options:
        raise InvalidArgumentError(
            "fit() needs the number of epochs: fit(model, loaders, 10), fit(model, loaders, "
            "epochs=10) or fit(model, loaders, FitConfig(epochs=10)).",
            argument="epochs",
        )
    return FitConfig(**options)


def _as_adversarial(adversarial: AdversarialConfig | Mapping[str, Any] | None) -> AdversarialConfig | None:
    if adversarial is None or isinstance(adversarial, AdversarialConfig):
        return adversarial
    if isinstance(adversarial, Mapping):
        try:
            return AdversarialConfig(**adversarial)
        except TypeError as exc:
            raise InvalidArgumentError(
                f"Bad adversarial config {dict(adversarial)}: {exc}.", argument="adversarial"
            ) from exc
    raise InvalidArgumentError(
        f"adversarial must be None, an AdversarialConfig or a dict, got {type(adversarial).__name__}.",
        argument="adversarial",
    )


def _split_loaders(loaders: Any) -> tuple[Iterable[Any], Iterable[Any] | None]:
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


def _num_batches(loader: Iterable[Any]) -> int:
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


def _amp_dtype(amp: AmpMode, device: torch.device) -> torch.dtype | None:
    if amp is True or amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InvalidArgumentError("This GPU does not support bf16; use amp='off'.")
        return torch.bfloat16
    if amp is False or amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    raise InvalidArgumentError(f"amp must be 'auto', 'bf16' (True) or 'off' (False), got {amp!r}.")


def _check_factory_names(optimizer: str, scheduler: str | None) -> None:
    """Refuse unknown optimizer / scheduler names before anything is touched."""
    from timm.optim import list_optimizers

    if not isinstance(optimizer, str) or optimizer.lower() not in list_optimizers():
        raise InvalidArgumentError(
            f"Unknown optimizer {optimizer!r}; use a timm optimizer name such as 'sgd', "
            "'adamw', 'lamb' (see timm.optim.list_optimizers()).",
            argument="optimizer",
        )
    if scheduler == "plateau":
        raise InvalidArgumentError(
            "The 'plateau' scheduler needs a metric per epoch; use 'step' or 'cosine'.",
            argument="scheduler",
        )
    if scheduler is not None and scheduler != "none" and scheduler not in SCHEDULERS:
        raise InvalidArgumentError(
            f"Unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)} or None.",
            argument="scheduler",
        )


def _create_optimizer(
    net: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
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


def _create_scheduler(
    opt: torch.optim.Optimizer, name: str | None, epochs: int, warmup_epochs: int,
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
    return sched


def _shard_train(loader: Iterable[Any], ctx: distributed.DistContext, seed: int) -> Iterable[Any]:
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


def _shard_test(loader: Iterable[Any] | None, ctx: distributed.DistContext) -> Iterable[Any] | None:
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


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise InvalidArgumentError(
            f"Expected (inputs, labels) batches, got {type(batch).__name__}."
        )
    return (
        batch[0].to(device, non_blocking=True),
        batch[1].to(device, torch.long, non_blocking=True),
    )


# --------------------------------------------------------------------------- RNG and checkpoints


def _derive_seed(seed: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1)[0])


def _seed_everything(
    seed: int, rank: int, device: torch.device, attack_gen: torch.Generator
) -> None:
    torch.default_generator.manual_seed(_derive_seed(seed, rank, 0))
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(_derive_seed(seed, rank, 0))
    np.random.seed(_derive_seed(seed, rank, 1))
    random.seed(_derive_seed(seed, rank, 2))
    attack_gen.manual_seed(_derive_seed(seed, rank, 3))


def _loader_generators(loader: Iterable[Any]) -> list[torch.Generator]:
    """The distinct generators a DataLoader draws its shuffle order and worker seeds from."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def _rng_state(
    device: torch.device, loader: Iterable[Any], attack_gen: torch.Generator
) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "loader": [g.get_state() for g in _loader_generators(loader)],
        "attack": attack_gen.get_state(),
    }


def _set_rng_state(
    state: Mapping[str, Any], device: torch.device, loader: Iterable[Any], attack_gen: torch.Generator
) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    gens = _loader_generators(loader)
    if len(gens) == len(state["loader"]):
        for g, s in zip(gens, state["loader"]):
            g.set_state(s.cpu())
    attack_gen.set_state(state["attack"].cpu())


def _save_checkpoint(
    path: Path, epoch: int, net: nn.Module, opt: torch.optim.Optimizer, sched: Any,
    regs: tuple[Regularizer, ...], loader: Iterable[Any], attack_gen: torch.Generator,
    history: list[EpochStats], fingerprint: dict[str, Any], ctx: distributed.DistContext,
) -> None:
    rng = distributed.all_gather_objects(_to_cpu(_rng_state(_device_of(net), loader, attack_gen)), ctx)
    if not ctx.is_main:
        return
    state = {
        "format": _FORMAT,
        "epoch": epoch,
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": None if sched is None else sched.state_dict(),
        "regularizers": [r.state_dict() if isinstance(r, nn.Module) else None for r in regs],
        "rng": rng,
        "history": [h.to_dict() for h in history],
        "fingerprint": fingerprint,
    }
    _atomic_save(state, path)


def _load_checkpoint(
    path: Path, fingerprint: dict[str, Any], device: torch.device
) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise InvalidArgumentError(
            f"Could not read the checkpoint {path} ({exc}); delete it to start over."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise InvalidArgumentError(f"{path} is not a robustprune training checkpoint; delete it.")
    saved = state["fingerprint"]
    diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
        raise InvalidArgumentError(
            f"The checkpoint in {path.parent} was written by a fit() with different arguments "
            f"({details}). Resume with the same arguments, or use another checkpoint_dir."
        )
    return state


def _restore(
    state: Mapping[str, Any], net: nn.Module, opt: torch.optim.Optimizer, sched: Any,
    regs: tuple[Regularizer, ...], loader: Iterable[Any], attack_gen: torch.Generator,
    ctx: distributed.DistContext,
) -> list[EpochStats]:
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InvalidArgumentError(
            "The checkpoint's weights do not fit this model (was it pruned differently?): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    opt.load_state_dict(state["optimizer"])
    if sched is not None and state["scheduler"] is not None:
        sched.load_state_dict(state["scheduler"])
    for r, r_state in zip(regs, state["regularizers"]):
        if isinstance(r, nn.Module) and r_state is not None:
            r.load_state_dict(r_state)
    _set_rng_state(state["rng"][ctx.rank], _device_of(net), loader, attack_gen)
    return [EpochStats(**h) for h in state["history"]]


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")

