"""The hyperparameters of :func:`robustprune.train.fit`: :class:`FitConfig`, validated once,
in ``__post_init__`` (every error names the offending field in ``argument=``)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from robustprune._speed import COMPILE_MODES, check_speed_flags, compile_mode_of
from robustprune.attacks import AdversarialConfig
from robustprune.errors import InvalidArgumentError

__all__ = ["FitConfig", "SCHEDULERS", "AMP_MODES", "AmpMode", "COMPILE_MODES", "compile_mode", "resolve_config"]


#: learning-rate schedules of ``timm.scheduler.create_scheduler_v2`` that ``fit`` accepts
#: (stepped per update); ``None`` or ``"none"`` keeps the learning rate constant
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant")
_AmpName = Literal["auto", "bf16", "off"]
#: the ``amp`` settings of :class:`FitConfig` (or True for "bf16", False for "off")
AMP_MODES: tuple[str, ...] = get_args(_AmpName)
AmpMode = _AmpName | bool


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
        channels_last: train the model and batches in the channels-last memory format (the
            layout tensor cores want; the same numbers up to float reassociation).
        compile: ``torch.compile`` the forward of the training step: False (default), True
            (mode "default") or a mode of :data:`COMPILE_MODES`, e.g.
            ``"max-autotune-no-cudagraphs"``. Attacks and regularizers run the plain model.
        cuda_graphs: replay the compiled forward as CUDA graphs (``torch.compile`` mode
            "reduce-overhead"); CUDA only, refused on a CPU. Off by default (with ``compile``
            and ``cuda_graphs`` the kernels, and so the last bits of the losses, change).
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
    amp: AmpMode = "auto"
    adversarial: AdversarialConfig | None = None
    optimizer_kwargs: Mapping[str, Any] | None = None
    scheduler_kwargs: Mapping[str, Any] | None = None
    channels_last: bool = False
    compile: bool | str = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 0)
        _check_real("lr", self.lr, low=0.0, strict=True)
        _check_real("weight_decay", self.weight_decay, low=0.0)
        _check_real("momentum", self.momentum, low=0.0)
        _check_int("warmup_epochs", self.warmup_epochs, 0)
        _check_real("min_lr", self.min_lr, low=0.0)
        if self.momentum >= 1:
            raise InvalidArgumentError(f"momentum must be in [0, 1), got {self.momentum!r}.", argument="momentum")
        if self.min_lr > self.lr:
            raise InvalidArgumentError(
                f"min_lr ({self.min_lr:g}) must be <= lr ({self.lr:g}): the schedule decays from lr to min_lr "
                "(a larger min_lr would raise the rate).", argument="min_lr")
        if self.warmup_epochs > self.epochs:
            raise InvalidArgumentError(
                f"warmup_epochs = {self.warmup_epochs} is longer than the training (epochs = {self.epochs}); "
                "use warmup_epochs <= epochs.", argument="warmup_epochs")
        if self.clip_grad_norm is not None:
            _check_real("clip_grad_norm", self.clip_grad_norm, low=0.0, strict=True)
        _check_factory_names(self.optimizer, self.scheduler)
        if not (isinstance(self.amp, bool) or self.amp in AMP_MODES):
            raise InvalidArgumentError(
                f"amp must be one of {', '.join(AMP_MODES)} (or True/False), got {self.amp!r}.",
                argument="amp",
            )
        check_speed_flags(self.channels_last, self.compile, self.cuda_graphs)
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


def resolve_config(config: FitConfig | int | None, options: Mapping[str, Any]) -> FitConfig:
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
            raise InvalidArgumentError(
                "fit() got epochs twice (positionally and as epochs=).", argument="epochs"
            )
        options = {**options, "epochs": config}
    if "epochs" not in options:
        raise InvalidArgumentError(
            "fit() needs the number of epochs: fit(model, loaders, 10), fit(model, loaders, "
            "epochs=10) or fit(model, loaders, FitConfig(epochs=10)).",
            argument="epochs",
        )
    return FitConfig(**options)


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


def compile_mode(cfg: FitConfig) -> str | None:
    """The ``torch.compile`` mode of the training forward, None for no compilation."""
    return compile_mode_of(cfg.compile, cfg.cuda_graphs)


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

