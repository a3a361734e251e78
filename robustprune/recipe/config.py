"""The recipe as frozen dataclasses, each validated once, in its constructor.

The sections (``[data]``, ``[train]``, ``[finetune]``, ...) live in
:mod:`robustprune.recipe.sections` and are re-exported here; this module holds the
``[[prune]]`` entries, ``[compare]``, ``[sweep]`` and the :class:`Recipe`. The allowed
values of every choice come from the library's registries (see
:mod:`robustprune.recipe.checks`). A field's ``choices`` metadata lists them; the TOML keys
are the field names (``options`` collects a table's free-form keys: dataset, model and
regularizer options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from robustprune.errors import InvalidArgumentError
from robustprune.pruners.schedules import Schedule
from robustprune.recipe.checks import (
    METHODS,
    SETTING_KEYS,
    check_choices,
    check_int,
    check_number,
    check_numbers,
    check_prune_entries,
    check_prune_settings,
    check_pruner_options,
    check_scheduled_entry,
)
from robustprune.recipe.logsection import LogConfig
from robustprune.recipe.sections import (
    AnalysisConfig,
    DataConfig,
    DistillSpec,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    RegularizerSpec,
    TrainConfig,
)
from robustprune.recipe.serialize import OMIT_EMPTY, to_data, to_toml

__all__ = [
    "RegularizerSpec",
    "DistillSpec",
    "CompareConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "FinetuneConfig",
    "PruneConfig",
    "EvalConfig",
    "AnalysisConfig",
    "SweepAxis",
    "LogConfig",
    "Recipe",
]


@dataclass(frozen=True)
class CompareConfig:
    """``[compare]``: the labels of the reference entry (the default pipeline: fixed ratio,
    one-shot, the same finetune) and of the scratch entry that every pruned setting is
    compared with in ``summary.md`` (paired over seeds). Default: the first ``fixed``
    entry with a one-shot schedule, no distillation and no own finetune; the first
    ``scratch`` entry. A ``[[prune]]`` entry's own ``reference``/``scratch`` wins."""

    reference: str | None = None
    scratch: str | None = None


@dataclass(frozen=True)
class PruneConfig:
    """One ``[[prune]]`` entry: a method (a key of :data:`robustprune.pruners.PRUNERS`, or
    ``"scratch"``) and its settings.

    Exactly one of ``eps``, ``ratio``, ``target_macs`` (lists: one model per value) or
    ``match`` is given, among those the method's pruner takes. ``match = "<label>"`` solves
    this method, for every model the entry called ``<label>`` produced, to the MACs that
    model reached (``target_macs = report.macs_kept``): baselines are compared at matched
    MACs. ``method = "scratch"`` (with ``match``) builds the exact per-layer widths of each
    matched model and trains them from random initialisation for as many epochs as that
    model cost in total (dense share included). ``label`` defaults to the method.

    ``schedule`` (default one-shot) prunes iteratively during the finetune or during the
    dense training (needs ``target_macs`` or ``match``); ``importance`` picks the channel
    scores (``"l2"`` or ``"adv-taylor"``, measured with the finetune's attack on the
    training data); ``widths``/``n_examples`` are the ``sensitivity`` method's options (it
    measures on ``[data] validation`` when set, else on training data); ``finetune`` overrides fields of ``[finetune]``
    for this entry (``{ epochs = 20, distill = { weight = 0.5 } }``; a nested table replaces
    the section's one); ``regularizers`` are added to this entry's finetuning loss (e.g.
    beta-control); ``reference``/``scratch`` name the entries it is compared with.
    """

    method: str = field(metadata={"choices": METHODS})
    label: str = ""
    eps: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    ratio: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    target_macs: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    match: str | None = None
    q: float | None = None
    round_to: int | None = None
    min_keep: int | None = None
    widths: tuple[float, ...] = field(default=(), metadata=OMIT_EMPTY)
    n_examples: int | None = None
    importance: str | None = None
    schedule: Schedule | None = None
    finetune: dict[str, Any] = field(default_factory=dict, metadata=OMIT_EMPTY)
    regularizers: tuple[RegularizerSpec, ...] = field(default=(), metadata=OMIT_EMPTY)
    reference: str | None = None
    scratch: str | None = None

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
        check_scheduled_entry(self)

    @property
    def kind(self) -> str:
        """The schedule kind (``"one-shot"`` without a schedule)."""
        return "one-shot" if self.schedule is None else self.schedule.kind

    def settings(self) -> list[dict[str, float]]:
        """The explicit settings, one dict per model (empty for ``match`` entries)."""
        for key in SETTING_KEYS:
            values = getattr(self, key)
            if values:
                return [{key: v} for v in values]
        return []

    def pruner_options(self) -> dict[str, Any]:
        """Extra keyword arguments for the pruner (``q``, ``round_to``, ``min_keep``, and
        the sensitivity method's ``widths`` and ``n_examples``); the importance and the data
        are added when the run builds the pruner."""
        out = {"q": self.q, "round_to": self.round_to, "min_keep": self.min_keep,
               "widths": self.widths or None, "n_examples": self.n_examples}
        return {k: v for k, v in out.items() if v is not None}


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
    and so do ``model`` and ``checkpoint`` (the checkpoint records its architecture).
    ``threads`` (top level) fixes the CPU threads of the run (default: the rule of
    :mod:`robustprune._threads`; the CLI's ``--threads`` wins); ``gpus_per_job`` is the GPUs
    each Ray task asks for (``--executor ray``; default 1 on CUDA, else 0); ``log`` is ``[log]``."""

    name: str = "recipe"
    data: DataConfig
    model: ModelConfig | None = None
    train: TrainConfig | None = None
    checkpoint: str | None = None
    prune: tuple[PruneConfig, ...] = ()
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    seeds: tuple[int, ...] = (0,)
    output: str = "runs"
    description: str = ""
    sweep: tuple[SweepAxis, ...] = ()
    threads: int | None = None
    gpus_per_job: float | None = None
    log: LogConfig = field(default_factory=LogConfig)
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
        check_int("threads", self.threads, 1, optional=True)
        if self.gpus_per_job is not None:
            check_number("gpus_per_job", self.gpus_per_job, 0)
        self._check_sources()
        check_prune_entries(self.prune, self.compare, trained=self.train is not None)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain TOML-able data (``None`` values omitted);
        :func:`~robustprune.recipe.parse_recipe` of it gives back an equal recipe."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out.update(seeds=list(self.seeds), output=self.output)
        if self.threads is not None:
            out["threads"] = self.threads
        if self.gpus_per_job is not None:
            out["gpus_per_job"] = self.gpus_per_job
        out["data"] = to_data(self.data)
        if self.model is not None:
            out["model"] = to_data(self.model)
        if self.checkpoint is not None:
            out["checkpoint"] = {"path": self.checkpoint}
        if self.train is not None:
            out["train"] = to_data(self.train)
        if self.prune:
            out["prune"] = [to_data(p) for p in self.prune]
        out.update(finetune=to_data(self.finetune), eval=to_data(self.eval), analysis=to_data(self.analysis))
        if to_data(self.compare):
            out["compare"] = to_data(self.compare)
        if self.log != LogConfig():  # runs from before [log] existed still resume
            out["log"] = to_data(self.log)
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
