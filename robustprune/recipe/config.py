"""The recipe as frozen dataclasses, each validated once, in its constructor.

``[train]`` and ``[finetune]`` are :class:`robustprune.train.FitConfig` s (validated by
it) plus the regularizers added to the loss; ``adversarial = {...}`` is a
:class:`robustprune.attacks.AdversarialConfig`. The allowed values of every choice come
from the library's registries (see :mod:`robustprune.recipe.checks`). A field's
``choices`` metadata lists them; the TOML keys are the field names (``options`` collects
a table's free-form keys: dataset, model and regularizer options).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustprune.attacks import ATTACKS, NORMS
from robustprune.data import list_datasets
from robustprune.errors import InvalidArgumentError
from robustprune.pruners import PRUNERS
from robustprune.recipe.checks import (
    ANALYSIS_MODELS,
    ANALYSIS_NORMS,
    CONV_NORMS,
    SETTING_KEYS,
    check_budget,
    check_choices,
    check_int,
    check_number,
    check_numbers,
    check_prune_entries,
    check_prune_settings,
    check_pruner_options,
    dataset_options,
    regularizer_options,
)
from robustprune.recipe.serialize import OMIT_EMPTY, to_data, to_toml
from robustprune.regularizers import REGULARIZERS
from robustprune.train import FitConfig

__all__ = [
    "RegularizerSpec",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "FinetuneConfig",
    "PruneConfig",
    "EvalConfig",
    "AnalysisConfig",
    "SweepAxis",
    "Recipe",
]


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
class DataConfig:
    """``[data]``: a registered dataset and its loader settings; ``options`` are the
    dataset's own keyword arguments (``size`` for digits, ``shape`` for synthetic, ...)."""

    name: str = field(metadata={"choices": list_datasets})
    batch_size: int = 128
    test_batch_size: int | None = None
    root: str | None = None
    download: bool = False
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)
        check_int("batch_size", self.batch_size, 1)
        check_int("test_batch_size", self.test_batch_size, 1, optional=True)
        check_int("num_workers", self.num_workers, 0)

    @staticmethod
    def option_names(fields: Mapping[str, Any]) -> list[str] | None:
        """The option keys of the dataset ``fields["name"]`` (None: any)."""
        return dataset_options(fields.get("name", ""))


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: a registered model name and its architecture ``options`` (checked
    against the model when a run starts)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def option_names(fields: Mapping[str, Any]) -> None:
        """Any key: the model's own keyword arguments."""
        return None


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(FitConfig):
    """``[finetune]``: how every pruned model is finetuned, a
    :class:`~robustprune.train.FitConfig` (``epochs = 0``: no finetune) plus the
    ``regularizers`` added to the loss (the specs; ``fit`` gets the built modules)."""

    epochs: int = 0
    lr: float = 0.01
    regularizers: tuple[RegularizerSpec, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adversarial is not None:
            check_budget("adversarial.eps", self.adversarial.eps, self.adversarial.norm)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(FitConfig):
    """``[train]``: how the dense model is trained, a :class:`~robustprune.train.FitConfig`
    (at least one epoch) plus the ``regularizers`` added to the loss."""

    regularizers: tuple[RegularizerSpec, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("epochs", self.epochs, 1)
        if self.adversarial is not None:
            check_budget("adversarial.eps", self.adversarial.eps, self.adversarial.norm)


@dataclass(frozen=True)
class PruneConfig:
    """One ``[[prune]]`` entry: a method (a key of :data:`robustprune.pruners.PRUNERS`)
    and its settings.

    Exactly one of ``eps``, ``ratio``, ``target_macs`` (lists: one model per value) or
    ``match`` is given, among those the method's pruner takes. ``match = "<label>"`` solves
    this method, for every model the entry called ``<label>`` produced, to the MACs that
    model reached (``target_macs = report.macs_kept``): baselines are compared at matched
    MACs. ``label`` defaults to the method. ``regularizers`` are added to the finetuning
    loss of this method only (e.g. beta-control).
    """

    method: str = field(metadata={"choices": tuple(PRUNERS)})
    label: str = ""
    eps: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    ratio: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    target_macs: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    match: str | None = None
    q: float | None = None
    round_to: int | None = None
    min_keep: int | None = None
    regularizers: tuple[RegularizerSpec, ...] = field(default=(), metadata=OMIT_EMPTY)

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.label:
            object.__setattr__(self, "label", self.method)
        if self.label == "dense":
            raise InvalidArgumentError(
                "label may be anything except 'dense' (the unpruned model).", argument="label"
            )
        check_numbers("eps", self.eps, lambda n, v: check_number(n, v, 0, 1, low_open=True, high_open=True))
        check_numbers("ratio", self.ratio, lambda n, v: check_number(n, v, 0, 1, high_open=True))
        check_numbers("target_macs", self.target_macs, lambda n, v: check_number(n, v, 0, 1, low_open=True))
        check_prune_settings(self.method, [k for k in (*SETTING_KEYS, "match") if getattr(self, k)])
        check_pruner_options(self.method, self.pruner_options())

    def settings(self) -> list[dict[str, float]]:
        """The explicit settings, one dict per model (empty for ``match`` entries)."""
        for key in SETTING_KEYS:
            values = getattr(self, key)
            if values:
                return [{key: v} for v in values]
        return []

    def pruner_options(self) -> dict[str, Any]:
        """Extra keyword arguments for the pruner (``q``, ``round_to``, ``min_keep``)."""
        out = {"q": self.q, "round_to": self.round_to, "min_keep": self.min_keep}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: clean accuracy, AutoAttack robust accuracy (``eps = None``: clean only;
    ``attacks`` from :data:`robustprune.attacks.ATTACKS`), MACs, params and latency."""

    norm: str = field(default="Linf", metadata={"choices": NORMS})
    eps: float | None = None
    attacks: tuple[str, ...] = field(default=("apgd-ce", "apgd-t"), metadata={"choices": ATTACKS})
    n_examples: int | None = None
    n_iter: int = 100
    batch_size: int = 256
    latency: bool = True

    def __post_init__(self) -> None:
        check_choices(self)
        if self.eps is not None:
            check_budget("eps", self.eps, self.norm)
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


@dataclass(frozen=True)
class SweepAxis:
    """One ``[sweep]`` entry: a dotted recipe key, the values it takes and the label that
    names it in the variant names (default: the key's last part). Every combination of all
    axes is one *variant* with its own dense model."""

    key: str
    values: tuple[Any, ...]
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.key.split(".")[-1])
        if not self.values:
            raise InvalidArgumentError("values must be a non-empty array.", argument="values")
        if self.key.split(".")[0] in ("sweep", "seeds", "name"):
            raise InvalidArgumentError("a sweep key must lie outside 'sweep', 'seeds' and 'name'.")


_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A validated recipe. ``train`` and ``checkpoint`` (a model file) exclude each other,
    and so do ``model`` and ``checkpoint`` (the checkpoint records its architecture)."""

    name: str = "recipe"
    data: DataConfig
    model: ModelConfig | None = None
    train: TrainConfig | None = None
    checkpoint: str | None = None
    prune: tuple[PruneConfig, ...] = ()
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    seeds: tuple[int, ...] = (0,)
    output: str = "runs"
    description: str = ""
    sweep: tuple[SweepAxis, ...] = ()
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InvalidArgumentError(
                "name must be made of letters, digits, '.', '_' and '-' (it names the run folder).",
                argument="name",
            )
        seeds = self.seeds
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise InvalidArgumentError(
                "seeds must be a non-empty array of integers >= 0 (or a count n >= 1: seeds "
                f"0..n-1), got {list(seeds)}.",
                argument="seeds",
            )
        if len(set(seeds)) != len(seeds):
            raise InvalidArgumentError(f"seeds must be distinct, got {list(seeds)}.", argument="seeds")
        self._check_sources()
        check_prune_entries(self.prune)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain TOML-able data (``None`` values omitted);
        :func:`~robustprune.recipe.parse_recipe` of it gives back an equal recipe."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out.update(seeds=list(self.seeds), output=self.output, data=to_data(self.data))
        if self.model is not None:
            out["model"] = to_data(self.model)
        if self.checkpoint is not None:
            out["checkpoint"] = {"path": self.checkpoint}
        if self.train is not None:
            out["train"] = to_data(self.train)
        if self.prune:
            out["prune"] = [to_data(p) for p in self.prune]
        out.update(finetune=to_data(self.finetune), eval=to_data(self.eval), analysis=to_data(self.analysis))
        if self.sweep:
            out["sweep"] = {a.key: {"label": a.label, "values": list(a.values)} for a in self.sweep}
        return out

    def to_toml(self) -> str:
        """The resolved recipe as TOML text (what ``config.toml`` of a run holds)."""
        header = f"# resolved robustprune recipe{f' (from {self.source})' if self.source else ''}\n"
        return header + to_toml(self.to_dict())

    def _check_sources(self) -> None:
        """Where the dense model comes from: trained ([model] + [train]) or a checkpoint."""
        if self.checkpoint is not None and self.train is not None:
            raise InvalidArgumentError(
                "give either [train] (train the dense model) or [checkpoint] (start from a "
                "trained model), not both."
            )
        if self.checkpoint is None and self.train is None:
            raise InvalidArgumentError(
                "missing section [train] (how to train the dense model) or [checkpoint] "
                'path = "..." (a trained model to start from).'
            )
        if self.checkpoint is not None and self.model is not None:
            raise InvalidArgumentError(
                "[model] and [checkpoint] exclude each other: the checkpoint records its own "
                "architecture. Remove [model]."
            )
        if self.checkpoint is None and self.model is None:
            raise InvalidArgumentError("missing section [model].")
