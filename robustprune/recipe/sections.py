"""The sections of a recipe as frozen dataclasses, each validated once, in its constructor:
``[data]``, ``[model]``, ``[train]``, ``[finetune]`` (with its ``distill`` and the
``regularizers`` specs), ``[eval]`` and ``[analysis]``. ``[train]`` and ``[finetune]`` are
:class:`robustprune.train.FitConfig` s (validated by it); ``adversarial = {...}`` is a
:class:`robustprune.attacks.AdversarialConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from robustprune._speed import check_speed_flags
from robustprune.attacks import ATTACKS, NORMS
from robustprune.data import list_datasets
from robustprune.errors import InvalidArgumentError
from robustprune.recipe.checks import (
    ANALYSIS_MODELS,
    ANALYSIS_NORMS,
    CONV_NORMS,
    check_budget,
    check_choices,
    check_int,
    check_number,
    check_warmup,
    dataset_options,
    regularizer_options,
)
from robustprune.recipe.serialize import OMIT_EMPTY
from robustprune.regularizers import REGULARIZERS
from robustprune.train import FitConfig
from robustprune.train.distill import DISTILL_TARGETS, DistillConfig

__all__ = [
    "RegularizerSpec",
    "DistillSpec",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "FinetuneConfig",
    "EvalConfig",
    "AnalysisConfig",
    "budget_key",
]

_NO_TEACHER = nn.Identity()  # validates a DistillSpec's numbers without a model


@dataclass(frozen=True)
class RegularizerSpec:
    """A regularizer added to the training loss: ``kind`` (a key of
    :data:`robustprune.regularizers.REGULARIZERS`), its ``weight`` and the class's other
    keyword arguments as ``options`` (``top``, ``layers``, ...)."""

    kind: str = field(metadata={"choices": tuple(REGULARIZERS)})
    weight: float
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)
        cls = REGULARIZERS[self.kind]
        # built once per argument, so that an error names the argument at fault
        for name, kwargs in (("weight", {}), *((k, {k: v}) for k, v in self.options.items())):
            try:
                cls(self.weight, **kwargs)
            except (InvalidArgumentError, TypeError, ValueError) as exc:
                raise InvalidArgumentError(str(exc), argument=name) from None

    @staticmethod
    def option_names(fields: Mapping[str, Any]) -> list[str] | None:
        """The option keys of the regularizer ``fields["kind"]`` (None: any)."""
        return regularizer_options(fields.get("kind", ""))

    def build(self) -> Any:
        """The regularizer module."""
        return REGULARIZERS[self.kind](self.weight, **self.options)


@dataclass(frozen=True)
class DistillSpec:
    """``distill = { weight, temperature, target }`` of a finetune: robust distillation
    (:class:`robustprune.train.DistillConfig`) with the same seed's dense model as the
    teacher."""

    weight: float = 0.5
    temperature: float = 2.0
    target: str = field(default="clean", metadata={"choices": DISTILL_TARGETS})

    def __post_init__(self) -> None:
        check_choices(self)
        self.build(_NO_TEACHER)  # DistillConfig validates the numbers

    def build(self, teacher: Any) -> DistillConfig:
        """The library's config with ``teacher``."""
        return DistillConfig(teacher=teacher, weight=self.weight, temperature=self.temperature, target=self.target)


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: a registered dataset and its loader settings; ``options`` are the
    dataset's own keyword arguments (``size`` for digits, ``shape`` for synthetic, ...)."""

    name: str = field(metadata={"choices": list_datasets})
    batch_size: int = 128
    test_batch_size: int | None = None
    root: str | None = None
    download: bool = False
    num_workers: int | None = None  # None: 0 for in-memory datasets, else half the CPUs, at most 4
    validation: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)
        check_number("validation", self.validation, 0, 1, high_open=True)
        check_int("batch_size", self.batch_size, 1)
        check_int("test_batch_size", self.test_batch_size, 1, optional=True)
        check_int("num_workers", self.num_workers, 0, optional=True)

    @staticmethod
    def option_names(fields: Mapping[str, Any]) -> list[str] | None:
        """The option keys of the dataset ``fields["name"]`` (None: any)."""
        return dataset_options(fields.get("name", ""))


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: a registered model name and its architecture ``options`` (checked
    against the model when a run starts); ``weights``: a weights file (a state_dict or a
    ``save_pruned`` file, :func:`robustprune.models.load_weights`) the dense model starts
    from: with ``[train] epochs = 0`` the dense model *is* these weights (no training),
    with more epochs the training starts from them instead of a random initialization
    (``scratch`` baselines still start from a random one)."""

    name: str
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def option_names(fields: Mapping[str, Any]) -> None:
        """Any key: the model's own keyword arguments."""
        return None


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(FitConfig):
    """``[finetune]``: how every pruned model is finetuned, a
    :class:`~robustprune.train.FitConfig` (``epochs = 0``: no finetune) plus the
    ``regularizers`` added to the loss (the specs; ``fit`` gets the built modules) and
    the optional ``distill`` from the same seed's dense model."""

    epochs: int = 0
    lr: float = 0.01
    regularizers: tuple[RegularizerSpec, ...] = ()
    distill: DistillSpec | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_warmup(self.epochs, self.warmup_epochs)
        if self.adversarial is not None:
            check_budget("adversarial.eps", self.adversarial.eps, self.adversarial.norm)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(FitConfig):
    """``[train]``: how the dense model is trained, a :class:`~robustprune.train.FitConfig`
    plus the ``regularizers`` added to the loss. ``epochs = 0`` (no training) needs
    ``[model] weights`` (checked before a run starts)."""

    regularizers: tuple[RegularizerSpec, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("epochs", self.epochs, 0)
        check_warmup(self.epochs, self.warmup_epochs)
        if self.adversarial is not None:
            check_budget("adversarial.eps", self.adversarial.eps, self.adversarial.norm)


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: clean accuracy, AutoAttack robust accuracy (``eps = None``: clean only;
    ``attacks`` from :data:`robustprune.attacks.ATTACKS`), MACs, params and latency.

    ``eps`` is the main budget (the ``robust_accuracy`` column); ``extra_eps`` are further
    budgets attacked with the same attacks on the same examples (e.g. ``eps = 0.031``,
    ``extra_eps = ["8/255"]``). Every budget's robust accuracy lands in the row's
    ``robust_at``, keyed by :func:`budget_key` (``f"{eps:.6g}"``: ``"0.031"``,
    ``"0.0313725"`` for 8/255). ``split = "val"`` evaluates on the ``[data] validation``
    split instead of the test set (to choose settings without touching the test set).
    ``channels_last``, ``compile``, ``cuda_graphs``: the speed path of the attacks (off by
    default; see :func:`robustprune.attacks.robust_accuracy`), recorded in the row's
    ``eval_settings.forward`` when one is on."""

    norm: str = field(default="Linf", metadata={"choices": NORMS})
    eps: float | None = None
    extra_eps: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    attacks: tuple[str, ...] = field(default=("apgd-ce", "apgd-t"), metadata={"choices": ATTACKS})
    n_examples: int | None = None
    n_iter: int = 100
    batch_size: int = 256
    latency: bool = True
    split: str = field(default="test", metadata={"choices": ("test", "val")})
    channels_last: bool = False
    compile: bool | str = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        check_choices(self)
        check_speed_flags(self.channels_last, self.compile, self.cuda_graphs)
        if self.eps is not None:
            check_budget("eps", self.eps, self.norm)
        self._check_extra_eps()
        if "standard" in self.attacks and len(self.attacks) > 1:
            raise InvalidArgumentError(
                'attacks must be either ["standard"] (the full AutoAttack ensemble) or a list of '
                f"single attacks, got {list(self.attacks)}.",
                argument="attacks",
            )
        if len(set(self.attacks)) != len(self.attacks):
            raise InvalidArgumentError(f"attacks must name each attack at most once, got {list(self.attacks)}.",
                                       argument="attacks")
        check_int("n_examples", self.n_examples, 1, optional=True)
        check_int("n_iter", self.n_iter, 1)
        check_int("batch_size", self.batch_size, 1)

    @property
    def budgets(self) -> tuple[float, ...]:
        """Every budget attacked: ``eps`` first, then ``extra_eps`` (empty without ``eps``)."""
        return () if self.eps is None else (self.eps, *self.extra_eps)

    def _check_extra_eps(self) -> None:
        if not self.extra_eps:
            return
        if self.eps is None:
            raise InvalidArgumentError(
                "extra_eps needs the main budget eps (robust_accuracy is measured at eps, the extra "
                "budgets on the same examples); set eps or remove extra_eps.",
                argument="extra_eps",
            )
        for value in self.extra_eps:
            check_budget("extra_eps", value, self.norm)
        keys = [budget_key(v) for v in self.budgets]
        if len(set(keys)) != len(keys):
            raise InvalidArgumentError(
                f"extra_eps must hold distinct budgets that differ from eps = {keys[0]} (budgets are "
                f"compared to six significant digits: {', '.join(keys)}).",
                argument="extra_eps",
            )


def budget_key(eps: float) -> str:
    """The key of budget ``eps`` in a row's ``robust_at``: ``f"{eps:.6g}"`` (six significant
    digits, stable for fractions: ``budget_key(8 / 255) == "0.0313725"``,
    ``budget_key(0.031) == "0.031"``)."""
    return f"{float(eps):.6g}"


@dataclass(frozen=True)
class AnalysisConfig:
    """``[analysis]``: run :func:`robustprune.analysis.analyze` on the ``"dense"`` models,
    on ``"all"`` models or on ``"none"``; ``n_examples`` test images feed the data-mode
    alignment and the dominant-direction audit; ``delta`` is the budget of the gap bound,
    the certified fraction and the audit (default: ``eval.eps`` for ``eval.norm``)."""

    models: str = field(default="none", metadata={"choices": ANALYSIS_MODELS})
    norms: tuple[str, ...] = field(default=ANALYSIS_NORMS, metadata={"choices": ANALYSIS_NORMS})
    conv_norm: str = field(default="matricized", metadata={"choices": CONV_NORMS})
    eps: float = 0.05
    n_examples: int = 256
    delta: float | None = None

    def __post_init__(self) -> None:
        check_choices(self)
        check_number("eps", self.eps, 0, 1, low_open=True, high_open=True)
        check_int("n_examples", self.n_examples, 1)
        if self.delta is not None:
            check_number("delta", self.delta, 0, low_open=True)
