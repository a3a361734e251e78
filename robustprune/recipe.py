"""Recipes: TOML files that describe a whole experiment, and the runner that executes them.

A recipe names the data, the model, how the dense model is trained (or which checkpoint it
starts from), which pruning methods and settings to compare, how each pruned model is
finetuned and how every model is evaluated::

    name = "digits-cnn"
    seeds = [0, 1]

    [data]
    name = "digits"            # extra keys are dataset options (size = 16, ...)

    [model]
    name = "cnn-small"         # extra keys are model options (widths = [16, 32, 64], ...)

    [train]                    # or [checkpoint] path = "dense.pt"
    epochs = 20
    adversarial = { kind = "pgd", eps = 0.1, steps = 5 }

    [[prune]]
    method = "epsilon"
    eps = [0.1, 0.2]

    [[prune]]
    method = "fixed"
    match = "epsilon"          # solved to the MACs each epsilon-pruned model reached

    [finetune]
    epochs = 5

    [eval]
    norm = "Linf"
    eps = 0.1
    attacks = ["apgd-ce", "apgd-t"]

:func:`load_recipe` reads and validates a file into frozen dataclasses; every unknown key
or bad value raises :class:`~robustprune.errors.RecipeError` naming the key, the file and
the allowed values. ``overrides`` (the command line's ``--set key=value``) are applied to
the parsed TOML before validation, values written as TOML literals
(``prune.eps=[0.02,0.05]``, ``data.name=synthetic``). :func:`run_recipe` executes a recipe
and writes ``runs/<name>/<timestamp>/`` (see its docstring).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import difflib
import inspect
import itertools
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustprune.errors import RecipeError, RobustPruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "AdversarialSpec",
    "RegularizerSpec",
    "DataConfig",
    "ModelConfig",
    "FitConfig",
    "PruneConfig",
    "EvalConfig",
    "AnalysisConfig",
    "SweepAxis",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "parse_override",
    "apply_override",
    "to_toml",
    "run_recipe",
    "RunResult",
]

logger = logging.getLogger(__name__)

PRUNE_METHODS = ("epsilon", "fixed", "global", "spectral")
#: which setting keys each pruning method accepts (``match`` solves for ``target_macs``)
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "epsilon": ("eps", "target_macs", "match"),
    "fixed": ("ratio", "target_macs", "match"),
    "global": ("ratio", "target_macs", "match"),
    "spectral": ("eps", "target_macs", "match"),
}
ATTACKS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square", "standard")
NORMS = ("Linf", "L2")
SCHEDULERS = ("cosine", "step", "multistep", "constant", "poly", "tanh", "none")
ADVERSARIAL_KINDS = ("pgd", "fgsm", "trades")
#: regularizer kind -> (class name in robustprune.regularizers, its extra options)
REGULARIZERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "beta": ("BetaDispersion", ("top", "layers")),
    "alignment": ("Alignment", ("layers",)),
    "nuclear": ("NuclearNorm", ()),
    "group-lasso": ("GroupLasso", ()),
    "row-sparsity": ("ScaleInvariantRowSparsity", ()),
}
ANALYSIS_MODELS = ("none", "dense", "all")

_MISSING: Any = object()


# =========================================================================== dataclasses


@dataclass(frozen=True)
class AdversarialSpec:
    """Adversarial training settings; maps to :class:`robustprune.attacks.AdversarialConfig`."""

    eps: float
    kind: str = "pgd"
    norm: str = "Linf"
    steps: int = 10
    step_size: float | None = None
    beta: float = 6.0


@dataclass(frozen=True)
class RegularizerSpec:
    """A regularizer added to the training loss: ``kind`` (see :data:`REGULARIZERS`), its
    ``weight`` and kind-specific ``options`` (``top``, ``layers``)."""

    kind: str
    weight: float
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: a registered dataset and its loader settings; ``options`` are the
    dataset's own keyword arguments (``size`` for digits, ``shape`` for synthetic, ...)."""

    name: str
    batch_size: int = 128
    test_batch_size: int | None = None
    root: str | None = None
    download: bool = False
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: a registered model name and its architecture ``options``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitConfig:
    """``[train]`` and ``[finetune]``: the arguments of :func:`robustprune.train.fit`."""

    epochs: int
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    clip_grad_norm: float | None = None
    amp: str = "auto"
    adversarial: AdversarialSpec | None = None
    regularizers: tuple[RegularizerSpec, ...] = ()


@dataclass(frozen=True)
class PruneConfig:
    """One ``[[prune]]`` entry: a method and its settings.

    Exactly one of ``eps``, ``ratio``, ``target_macs`` (lists: one model per value) or
    ``match`` is given. ``match = "<label>"`` solves this method, for every model the entry
    called ``<label>`` produced, to the MACs that model reached (``target_macs =
    report.macs_kept``): baselines are compared at matched MACs. ``regularizers`` are added
    to the finetuning loss of this method only (e.g. beta-control).
    """

    method: str
    label: str
    eps: tuple[float, ...] = ()
    ratio: tuple[float, ...] = ()
    target_macs: tuple[float, ...] = ()
    match: str | None = None
    q: float | None = None
    round_to: int | None = None
    min_keep: int | None = None
    regularizers: tuple[RegularizerSpec, ...] = ()

    def settings(self) -> list[dict[str, float]]:
        """The explicit settings, one dict per model (empty for ``match`` entries)."""
        for key in ("eps", "ratio", "target_macs"):
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
    """``[eval]``: clean accuracy, AutoAttack robust accuracy (``eps = None``: clean only),
    MACs, params and latency."""

    norm: str = "Linf"
    eps: float | None = None
    attacks: tuple[str, ...] = ("apgd-ce", "apgd-t")
    n_examples: int | None = None
    n_iter: int = 100
    batch_size: int = 256
    latency: bool = True


@dataclass(frozen=True)
class AnalysisConfig:
    """``[analysis]``: run :func:`robustprune.analysis.analyze` on the ``"dense"`` models,
    on ``"all"`` models or on ``"none"``; ``n_examples`` test images feed the data-mode
    alignment and the dominant-direction audit; ``delta`` is the budget of the gap bound,
    the certified fraction and the audit (default: ``eval.eps`` for ``eval.norm``)."""

    models: str = "none"
    norms: tuple[str, ...] = ("2", "inf")
    conv_norm: str = "matricized"
    eps: float = 0.05
    n_examples: int = 256
    delta: float | None = None


@dataclass(frozen=True)
class SweepAxis:
    """One ``[sweep]`` entry: a dotted recipe key and the values it takes. Every
    combination of all axes is one *variant* with its own dense model."""

    key: str
    values: tuple[Any, ...]
    label: str


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``train`` and ``checkpoint`` are mutually exclusive."""

    name: str
    data: DataConfig
    model: ModelConfig | None
    train: FitConfig | None
    checkpoint: str | None
    prune: tuple[PruneConfig, ...]
    finetune: FitConfig
    eval: EvalConfig
    analysis: AnalysisConfig = AnalysisConfig()
    seeds: tuple[int, ...] = (0,)
    output: str = "runs"
    description: str = ""
    sweep: tuple[SweepAxis, ...] = ()
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain TOML-able data (``None`` values omitted);
        :func:`parse_recipe` of it gives back an equal recipe."""
        return _recipe_to_dict(self)

    def to_toml(self) -> str:
        """The resolved recipe as TOML text (what ``config.toml`` of a run holds)."""
        header = f"# resolved robustprune recipe{f' (from {self.source})' if self.source else ''}\n"
        return header + to_toml(self.to_dict())

    def variants(self) -> list[tuple[str, Recipe]]:
        """``(variant name, recipe)`` for every combination of the sweep axes; a recipe
        without a sweep has the single variant ``""``."""
        if not self.sweep:
            return [("", self)]
        base = self.to_dict()
        base.pop("sweep", None)
        out = []
        for combo in itertools.product(*(axis.values for axis in self.sweep)):
            raw = copy.deepcopy(base)
            parts = []
            for axis, value in zip(self.sweep, combo):
                try:
                    apply_override(raw, axis.key, value)
                except RecipeError as exc:
                    raise RecipeError(f"{self.source or 'recipe'}: [sweep] {exc}") from None
                parts.append(f"{axis.label}={_fmt_value(value)}")
            src = f"{self.source or 'recipe'} [sweep {', '.join(parts)}]"
            out.append((", ".join(parts), parse_recipe(raw, source=src)))
        return out


# =========================================================================== loading


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file.

    Args:
        path: a ``.toml`` recipe.
        overrides: ``"key=value"`` strings (the CLI's ``--set``); ``key`` is dotted
            (``train.epochs``, ``prune.eps``, ``prune.0.eps``, ``prune.fixed.ratio``) and
            ``value`` a TOML literal (``[0.02, 0.05]``, ``true``, ``"x"``); a value that is
            not a TOML literal is taken as a string (``data.name=synthetic``).

    Raises:
        RecipeError: the file is missing or not TOML, a key is unknown, a value is bad.
    """
    p = Path(path)
    if not p.is_file():
        hint = ""
        if not p.suffix:
            candidate = Path("recipes") / f"{p.name}.toml"
            if candidate.is_file():
                hint = f" Did you mean '{candidate}'?"
        raise RecipeError(f"Recipe file '{p}' does not exist.{hint}")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{p}: not valid TOML: {exc}.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"Cannot read recipe file '{p}': {exc}.") from exc
    raw.setdefault("name", p.stem)
    overridden = set()
    for item in overrides:
        key, value = parse_override(item)
        try:
            overridden.update(apply_override(raw, key, value))
        except RecipeError as exc:
            raise RecipeError(f"{p}: --set {item}: {exc}") from None
    return parse_recipe(raw, source=str(p), overridden=overridden)


_KEY_PART = re.compile(r'"[^"]+"|[A-Za-z0-9_\-+]+')
_KEY = re.compile(rf"(?:{_KEY_PART.pattern})(?:\.(?:{_KEY_PART.pattern}))*")


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; ``value`` is a TOML literal, or a bare
    string when it is not one (``data.name=synthetic``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(
            f"--set expects KEY=VALUE (e.g. --set train.epochs=3 or --set prune.eps=[0.02,0.05]), "
            f"got '{item}'."
        )
    if not _KEY.fullmatch(key):
        raise RecipeError(
            f"--set {item}: '{key}' is not a dotted key such as 'train.epochs' (quote a part "
            "that contains dots: sweep.\"train.lr\".values)."
        )
    text = text.strip()
    try:
        return key, tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if text[:1] in "[{\"'" or text == "":
            raise RecipeError(f"--set {item}: '{text}' is not a valid TOML value ({exc}).") from None
        return key, text


def apply_override(raw: dict[str, Any], key: str, value: Any) -> list[str]:
    """Set dotted ``key`` to ``value`` in a parsed-TOML dict, in place.

    Inside an array of tables (``prune``, ``regularizers``) the next part of the key is an
    index (``prune.0.eps``), an entry's label/method/kind (``prune.fixed.ratio``), or else a
    key that is set on every entry that already has it (``prune.eps`` sets ``eps`` on every
    entry with an ``eps``; on all entries when none has one). Returns the concrete dotted
    paths that were set (``prune.0.eps``, ...)."""
    touched: list[str] = []
    if not _KEY.fullmatch(key):
        raise RecipeError(f"'{key}' is not a dotted key such as 'train.epochs'.")
    parts = [p[1:-1] if p.startswith('"') else p for p in _KEY_PART.findall(key)]
    _apply(raw, parts, value, key, [], touched)
    return touched


def _apply(node: Any, parts: list[str], value: Any, full: str, trail: list[str], touched: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        tables = [e for e in node if isinstance(e, dict)]
        if len(tables) != len(node):
            raise RecipeError(f"'{full}': cannot address inside an array of plain values.")
        if head.isdigit():
            idx = int(head)
            if idx >= len(node):
                raise RecipeError(f"'{full}': index {idx} is out of range (the array has {len(node)} entries).")
            targets = [node[idx]]
        else:
            targets = [e for e in node if head in (e.get("label"), e.get("method"), e.get("kind"))]
            if targets:
                if not rest:
                    raise RecipeError(f"'{full}': name a key inside entry '{head}'.")
            else:
                with_key = [e for e in node if head in e]
                targets, rest = (with_key or list(node)), parts
                if not targets:
                    raise RecipeError(f"'{full}': the array is empty, nothing to set.")
        for target in targets:
            if rest:
                idx = next(i for i, e in enumerate(node) if e is target)
                _apply(target, rest, copy.deepcopy(value), full, [*trail, str(idx)], touched)
            else:
                raise RecipeError(f"'{full}': cannot replace an array entry; set a key inside it.")
        return
    if not isinstance(node, dict):
        raise RecipeError(f"'{full}': '{head}' is inside a value that is not a table.")
    if not rest:
        node[head] = value
        touched.append(".".join(f'"{p}"' if "." in p else p for p in [*trail, head]))
        return
    child = node.get(head)
    if child is None:
        child = node[head] = {}
    _apply(child, rest, value, full, [*trail, head], touched)


def parse_recipe(
    raw: Mapping[str, Any], *, source: str | None = None, overridden: Iterable[str] = ()
) -> Recipe:
    """Validate parsed TOML data into a :class:`Recipe` (see :func:`load_recipe`)."""
    ctx = _Ctx(source or "recipe", frozenset(overridden))
    top = _Table(raw, "", ctx)
    name = top.get("name", _string(), "recipe")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        ctx.fail("name", name, "a name made of letters, digits, '.', '_' and '-' (it names the run folder)")
    description = top.get("description", _string(), "")
    seeds = top.get("seeds", _seeds(), (0,))
    output = top.get("output", _string(), "runs")

    data = _parse_data(top.table("data", required=True), ctx)
    has_ckpt = "checkpoint" in raw
    checkpoint = None
    if has_ckpt:
        value = raw["checkpoint"]
        if isinstance(value, dict):
            ct = top.table("checkpoint")
            checkpoint = ct.get("path", _string(), _MISSING)
            ct.done()
        else:
            checkpoint = top.get("checkpoint", _string(), _MISSING)
    model = None
    if "model" in raw or not has_ckpt:
        mt = top.table("model", required=True)
        model = ModelConfig(mt.get("name", _string(), _MISSING), mt.rest())
    if has_ckpt and "train" in raw:
        raise RecipeError(
            f"{ctx.source}: give either [train] (train the dense model) or [checkpoint] (start "
            "from a trained model), not both."
        )
    if not has_ckpt and "train" not in raw:
        raise RecipeError(
            f"{ctx.source}: missing section [train] (how to train the dense model) or "
            "[checkpoint] path = \"...\" (a trained model to start from)."
        )
    if has_ckpt and model is not None:
        raise RecipeError(
            f"{ctx.source}: [model] and [checkpoint] exclude each other: the checkpoint records "
            "its own architecture. Remove [model]."
        )
    train = _parse_fit(top.table("train"), ctx, required_epochs=True) if "train" in raw else None
    finetune = (
        _parse_fit(top.table("finetune"), ctx, required_epochs=False, default_lr=0.01)
        if "finetune" in raw
        else FitConfig(epochs=0, lr=0.01)
    )
    prune = _parse_prune(raw.get("prune", []), ctx)
    eval_cfg = _parse_eval(top.table("eval"), ctx) if "eval" in raw else EvalConfig()
    analysis = _parse_analysis(top.table("analysis"), ctx) if "analysis" in raw else AnalysisConfig()
    sweep = _parse_sweep(top.table("sweep"), ctx) if "sweep" in raw else ()
    top.done(
        allowed=(
            "name", "description", "seeds", "output", "data", "model", "train", "checkpoint",
            "prune", "finetune", "eval", "analysis", "sweep",
        )
    )
    recipe = Recipe(
        name=name,
        data=data,
        model=model,
        train=train,
        checkpoint=checkpoint,
        prune=prune,
        finetune=finetune,
        eval=eval_cfg,
        analysis=analysis,
        seeds=seeds,
        output=output,
        description=description,
        sweep=sweep,
        source=source,
    )
    if sweep:
        recipe.variants()  # every combination must validate now, not halfway through a run
    return recipe


# --------------------------------------------------------------------------- sections


def _parse_data(t: _Table, ctx: _Ctx) -> DataConfig:
    name = t.get("name", _string(), _MISSING)
    from robustprune.data import list_datasets

    if name not in list_datasets():
        ctx.fail("data.name", name, None, choices=list_datasets())
    cfg = DataConfig(
        name=name,
        batch_size=t.get("batch_size", _int(1), 128),
        test_batch_size=t.get("test_batch_size", _optional(_int(1)), None),
        root=t.get("root", _optional(_string()), None),
        download=t.get("download", _bool(), False),
        num_workers=t.get("num_workers", _int(0), 0),
        options={},
    )
    allowed = _dataset_options(name)
    options = t.rest()
    for key in options:
        if allowed is not None and key not in allowed:
            ctx.unknown(
                f"data.{key}",
                ["name", "batch_size", "test_batch_size", "root", "download", "num_workers", *allowed],
                f"[data] (dataset '{name}' takes the options {', '.join(allowed) or 'none'})",
            )
    return dataclasses.replace(cfg, options=options)


def _dataset_options(name: str) -> list[str] | None:
    """The keyword options a registered dataset factory accepts (None: cannot tell)."""
    from robustprune import data as data_module

    factory = getattr(data_module, "_REGISTRY", {}).get(name)
    if factory is None:
        return None
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("root", "download", "seed")]


def _parse_fit(t: _Table, ctx: _Ctx, *, required_epochs: bool, default_lr: float = 0.05) -> FitConfig:
    cfg = FitConfig(
        epochs=t.get("epochs", _int(0 if not required_epochs else 1), _MISSING if required_epochs else 0),
        lr=t.get("lr", _float(0, None, low_open=True), default_lr),
        optimizer=t.get("optimizer", _optimizer(), "sgd"),
        momentum=t.get("momentum", _float(0, 1, high_open=True), 0.9),
        weight_decay=t.get("weight_decay", _float(0, None), 5e-4),
        scheduler=t.get("scheduler", _choice(SCHEDULERS), "cosine"),
        warmup_epochs=t.get("warmup_epochs", _int(0), 0),
        min_lr=t.get("min_lr", _float(0, None), 0.0),
        clip_grad_norm=t.get("clip_grad_norm", _optional(_float(0, None, low_open=True)), None),
        amp=t.get("amp", _amp(), "auto"),
        adversarial=_parse_adversarial(t, ctx),
        regularizers=_parse_regularizers(t, ctx),
    )
    t.done()
    return cfg


def _parse_adversarial(t: _Table, ctx: _Ctx) -> AdversarialSpec | None:
    if "adversarial" not in t.raw or t.raw["adversarial"] is False:
        t.asked.append("adversarial")
        return None
    a = t.table("adversarial")
    norm = a.get("norm", _choice(NORMS), "Linf")
    spec = AdversarialSpec(
        kind=a.get("kind", _choice(ADVERSARIAL_KINDS), "pgd"),
        norm=norm,
        eps=a.get("eps", _float(0, 1 if norm == "Linf" else None, low_open=True), _MISSING),
        steps=a.get("steps", _int(1), 10),
        step_size=a.get("step_size", _optional(_float(0, None, low_open=True)), None),
        beta=a.get("beta", _float(0, None), 6.0),
    )
    a.done()
    return spec


def _parse_regularizers(t: _Table, ctx: _Ctx) -> tuple[RegularizerSpec, ...]:
    items = t.array("regularizers")
    out = []
    for r in items:
        kind = r.get("kind", _choice(tuple(REGULARIZERS)), _MISSING)
        weight = r.get("weight", _float(0, None), _MISSING)
        options: dict[str, Any] = {}
        allowed_opts = REGULARIZERS[kind][1]
        if "top" in allowed_opts:
            top = r.get("top", _optional(_float(0, 1, low_open=True)), None)
            if top is not None:
                options["top"] = top
        if "layers" in allowed_opts:
            layers = r.get("layers", _optional(_strings()), None)
            if layers is not None:
                options["layers"] = list(layers)
        r.done(allowed=("kind", "weight", *allowed_opts), what=f"[{r.path}] (kind '{kind}')")
        out.append(RegularizerSpec(kind, weight, options))
    return tuple(out)


def _parse_prune(items: Any, ctx: _Ctx) -> tuple[PruneConfig, ...]:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        ctx.fail("prune", items, "an array of tables ([[prune]] entries)")
    entries: list[PruneConfig] = []
    for i, raw in enumerate(items):
        if not isinstance(raw, dict):
            ctx.fail(f"prune[{i}]", raw, "a table ([[prune]] with method = ...)")
        t = _Table(raw, f"prune[{i}]", ctx)
        method = t.get("method", _choice(PRUNE_METHODS), _MISSING)
        label = t.get("label", _string(), method)
        lo_open = _float(0, 1, low_open=True, high_open=True)
        eps = t.get("eps", _floats(lo_open), ())
        ratio = t.get("ratio", _floats(_float(0, 1, high_open=True)), ())
        target = t.get("target_macs", _floats(_float(0, 1, low_open=True)), ())
        match = t.get("match", _optional(_string()), None)
        for key, values in (("eps", eps), ("ratio", ratio), ("target_macs", target)):
            if len(set(values)) != len(values):
                ctx.fail(f"prune[{i}].{key}", list(values), "distinct values (one model per value)")
        given = [k for k, v in (("eps", eps), ("ratio", ratio), ("target_macs", target), ("match", match)) if v]
        allowed = METHOD_SETTINGS[method]
        for key in given:
            if key not in allowed:
                raise RecipeError(
                    f"{ctx.source}: prune[{i}] (method '{method}') does not take '{key}'; "
                    f"method '{method}' takes one of: {', '.join(allowed)}."
                )
        if len(given) != 1:
            raise RecipeError(
                f"{ctx.source}: prune[{i}] (method '{method}') needs exactly one of "
                f"{', '.join(allowed)}; got {', '.join(given) or 'none'}."
            )
        entry = PruneConfig(
            method=method,
            label=label,
            eps=eps,
            ratio=ratio,
            target_macs=target,
            match=match,
            q=t.get("q", _optional(_float(1, None)), None),
            round_to=t.get("round_to", _optional(_int(1)), None),
            min_keep=t.get("min_keep", _optional(_int(1)), None),
            regularizers=_parse_regularizers(t, ctx),
        )
        t.done()
        entries.append(entry)
    labels = [e.label for e in entries]
    for i, e in enumerate(entries):
        if labels.count(e.label) > 1:
            raise RecipeError(
                f"{ctx.source}: prune[{i}].label = '{e.label}' is used by more than one [[prune]] "
                "entry; give each entry a distinct label (e.g. label = \"epsilon+beta\")."
            )
        if e.label == "dense":
            ctx.fail(f"prune[{i}].label", e.label, "any label except 'dense' (the unpruned model)")
        if e.match is not None:
            target = next((x for x in entries if x.label == e.match), None)
            others = [x.label for x in entries if x.match is None and x is not e]
            if target is None or target is e or target.match is not None:
                ctx.fail(
                    f"prune[{i}].match",
                    e.match,
                    "the label of another [[prune]] entry that has explicit settings",
                    choices=others,
                )
    return tuple(entries)


def _parse_eval(t: _Table, ctx: _Ctx) -> EvalConfig:
    norm = t.get("norm", _choice(NORMS), "Linf")
    cfg = EvalConfig(
        norm=norm,
        eps=t.get("eps", _optional(_float(0, 1 if norm == "Linf" else None, low_open=True)), None),
        attacks=t.get("attacks", _choices(ATTACKS), ("apgd-ce", "apgd-t")),
        n_examples=t.get("n_examples", _optional(_int(1)), None),
        n_iter=t.get("n_iter", _int(1), 100),
        batch_size=t.get("batch_size", _int(1), 256),
        latency=t.get("latency", _bool(), True),
    )
    t.done()
    if "standard" in cfg.attacks and len(cfg.attacks) > 1:
        ctx.fail("eval.attacks", list(cfg.attacks), "either [\"standard\"] (the full AutoAttack ensemble) or a list of single attacks")
    if len(set(cfg.attacks)) != len(cfg.attacks):
        ctx.fail("eval.attacks", list(cfg.attacks), "each attack at most once")
    return cfg


def _parse_analysis(t: _Table, ctx: _Ctx) -> AnalysisConfig:
    cfg = AnalysisConfig(
        models=t.get("models", _choice(ANALYSIS_MODELS), "none"),
        norms=t.get("norms", _choices(("2", "inf")), ("2", "inf")),
        conv_norm=t.get("conv_norm", _choice(("matricized", "operator")), "matricized"),
        eps=t.get("eps", _float(0, 1, low_open=True, high_open=True), 0.05),
        n_examples=t.get("n_examples", _int(1), 256),
        delta=t.get("delta", _optional(_float(0, None, low_open=True)), None),
    )
    t.done()
    return cfg


def _parse_sweep(t: _Table, ctx: _Ctx) -> tuple[SweepAxis, ...]:
    axes = []
    for key in list(t.raw):
        value = t.raw[key]
        t.used.add(key)
        label = key.split(".")[-1]
        if isinstance(value, dict):
            sub = _Table(value, f"sweep.{key}", ctx)
            label = sub.get("label", _string(), label)
            values = sub.get("values", _any_list(), _MISSING)
            sub.done()
        elif isinstance(value, list):
            values = value
        else:
            ctx.fail(f"sweep.{key}", value, "a non-empty array of values, or { label = ..., values = [...] }")
        if not values:
            ctx.fail(f"sweep.{key}", values, "a non-empty array of values")
        if key.split(".")[0] in ("sweep", "seeds", "name"):
            ctx.fail(f"sweep.{key}", values, "a key outside 'sweep', 'seeds' and 'name'")
        axes.append(SweepAxis(key, tuple(values), label))
    return tuple(axes)


# --------------------------------------------------------------------------- validation kit


@dataclass(frozen=True)
class _Ctx:
    source: str
    overridden: frozenset[str]

    def where(self, key: str) -> str:
        plain = re.sub(r"\[(\d+)\]", r".\1", key)
        hit = any(plain == o or plain.startswith(o + ".") for o in self.overridden)
        return f"{self.source} (value from --set)" if hit else self.source

    def fail(
        self,
        key: str,
        value: Any,
        expected: str | None,
        *,
        choices: Sequence[str] | None = None,
    ) -> Any:
        msg = f"{self.where(key)}: {key} = {_fmt_value(value)} is invalid"
        if choices is not None:
            msg += f"; allowed values: {', '.join(repr(c) for c in choices)}"
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            if expected:
                msg += f" ({expected})"
        else:
            msg += f": expected {expected}"
        raise RecipeError(msg + ".")

    def unknown(self, key: str, allowed: Sequence[str], section: str) -> Any:
        msg = f"{self.where(key)}: unknown key '{key}' in {section}. Allowed keys: {', '.join(allowed)}"
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(allowed), n=1)
        if close:
            msg += f" (did you mean '{close[0]}'?)"
        raise RecipeError(msg + ".")


class _Table:
    """A TOML table being validated: ``get`` keys with validators, then ``done`` rejects the
    keys nobody asked for."""

    def __init__(self, raw: Any, path: str, ctx: _Ctx) -> None:
        if not isinstance(raw, dict):
            ctx.fail(path, raw, "a table")
        self.raw: dict[str, Any] = raw
        self.path = path
        self.ctx = ctx
        self.used: set[str] = set()
        self.asked: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, validator: _Validator, default: Any) -> Any:
        self.asked.append(name)
        if name not in self.raw:
            if default is _MISSING:
                raise RecipeError(
                    f"{self.ctx.source}: missing key '{self.key(name)}' "
                    f"(expected {validator.expected})."
                )
            return default
        self.used.add(name)
        value = self.raw[name]
        try:
            return validator(value)
        except _Bad as bad:
            return self.ctx.fail(self.key(name), value, bad.expected, choices=bad.choices)

    def table(self, name: str, *, required: bool = False) -> _Table:
        self.asked.append(name)
        if name not in self.raw:
            if required:
                raise RecipeError(f"{self.ctx.source}: missing section [{self.key(name)}].")
            return _Table({}, self.key(name), self.ctx)
        self.used.add(name)
        return _Table(self.raw[name], self.key(name), self.ctx)

    def array(self, name: str) -> list[_Table]:
        self.asked.append(name)
        value = self.raw.get(name, [])
        self.used.add(name)
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.ctx.fail(self.key(name), value, "an array of tables, e.g. [{ kind = \"beta\", weight = 0.1 }]")
        return [_Table(v, f"{self.key(name)}[{i}]", self.ctx) for i, v in enumerate(value)]

    def rest(self) -> dict[str, Any]:
        """Every key not asked for yet (free-form options), marked as used."""
        out = {k: v for k, v in self.raw.items() if k not in self.asked}
        self.used.update(out)
        return out

    def done(self, allowed: Sequence[str] | None = None, what: str | None = None) -> None:
        allowed = list(allowed) if allowed is not None else self.asked
        for name in self.raw:
            if name not in allowed:
                self.ctx.unknown(self.key(name), allowed, what or (f"[{self.path}]" if self.path else "the top level"))


class _Bad(Exception):
    def __init__(self, expected: str, choices: Sequence[str] | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.choices = choices


@dataclass(frozen=True)
class _Validator:
    expected: str
    fn: Callable[[Any], Any]

    def __call__(self, value: Any) -> Any:
        return self.fn(value)


def _int(low: int | None = None) -> _Validator:
    expected = "an integer" + (f" >= {low}" if low is not None else "")

    def fn(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
            raise _Bad(expected)
        return int(v)

    return _Validator(expected, fn)


def _float(
    low: float | None, high: float | None, *, low_open: bool = False, high_open: bool = False
) -> _Validator:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    expected = "a number" + (" " + " and ".join(parts) if parts else "")

    def fn(v: Any) -> float:
        if isinstance(v, str):  # "8/255" style fractions are convenient for budgets
            m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", v)
            try:
                v = float(m.group(1)) / float(m.group(2)) if m else v
            except (ValueError, ZeroDivisionError):
                raise _Bad(expected) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad(expected)
        v = float(v)
        if low is not None and (v < low or (low_open and v == low)):
            raise _Bad(expected)
        if high is not None and (v > high or (high_open and v == high)):
            raise _Bad(expected)
        return v

    return _Validator(expected, fn)


def _floats(item: _Validator) -> _Validator:
    expected = f"a non-empty array of numbers, each {item.expected.removeprefix('a number ')}"

    def fn(v: Any) -> tuple[float, ...]:
        values = v if isinstance(v, list) else [v]
        if not values:
            raise _Bad(expected)
        try:
            return tuple(item(x) for x in values)
        except _Bad:
            raise _Bad(expected) from None

    return _Validator(expected, fn)


def _string() -> _Validator:
    def fn(v: Any) -> str:
        if not isinstance(v, str) or not v:
            raise _Bad("a non-empty string")
        return v

    return _Validator("a non-empty string", fn)


def _strings() -> _Validator:
    def fn(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise _Bad("an array of strings")
        return tuple(v)

    return _Validator("an array of strings", fn)


def _any_list() -> _Validator:
    def fn(v: Any) -> list[Any]:
        if not isinstance(v, list) or not v:
            raise _Bad("a non-empty array")
        return v

    return _Validator("a non-empty array", fn)


def _bool() -> _Validator:
    def fn(v: Any) -> bool:
        if not isinstance(v, bool):
            raise _Bad("true or false")
        return v

    return _Validator("true or false", fn)


def _choice(choices: Sequence[str]) -> _Validator:
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def fn(v: Any) -> str:
        if v not in choices:
            raise _Bad("", choices=choices)
        return v

    return _Validator(expected, fn)


def _choices(choices: Sequence[str]) -> _Validator:
    expected = "an array of values from " + ", ".join(repr(c) for c in choices)

    def fn(v: Any) -> tuple[str, ...]:
        values = v if isinstance(v, list) else [v]
        bad = [x for x in values if x not in choices]
        if bad or not values:
            raise _Bad("a non-empty array of them", choices=choices)
        return tuple(values)

    return _Validator(expected, fn)


def _amp() -> _Validator:
    def fn(v: Any) -> str:
        if v is True or v is False:
            return "bf16" if v else "off"
        if v not in ("auto", "bf16", "off"):
            raise _Bad("", choices=("auto", "bf16", "off"))
        return v

    return _Validator("'auto', 'bf16' or 'off'", fn)


def _optimizer() -> _Validator:
    def fn(v: Any) -> str:
        from timm.optim import list_optimizers

        names = list_optimizers()
        if not isinstance(v, str) or v.lower() not in names:
            common = [n for n in ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "lion") if n in names]
            raise _Bad("a timm optimizer name (see timm.optim.list_optimizers())", choices=common)
        return v.lower()

    return _Validator("a timm optimizer name", fn)


def _optional(inner: _Validator) -> _Validator:
    return _Validator(inner.expected, inner.fn)  # TOML has no null: absent means None


def _seeds() -> _Validator:
    expected = "a non-empty array of distinct integers >= 0 (or a count n: seeds 0..n-1)"

    def fn(v: Any) -> tuple[int, ...]:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return tuple(range(v))
        if (
            not isinstance(v, list)
            or not v
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v)
            or len(set(v)) != len(v)
        ):
            raise _Bad(expected)
        return tuple(v)

    return _Validator(expected, fn)


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_fmt_value(x)}" for k, x in v.items()) + " }"
    return str(v)


# =========================================================================== writing TOML


def _recipe_to_dict(r: Recipe) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r.name}
    if r.description:
        out["description"] = r.description
    out["seeds"] = list(r.seeds)
    out["output"] = r.output
    data = {k: v for k, v in dataclasses.asdict(r.data).items() if k != "options"}
    out["data"] = _drop_none({**data, **r.data.options})
    if r.model is not None:
        out["model"] = {"name": r.model.name, **r.model.options}
    if r.checkpoint is not None:
        out["checkpoint"] = {"path": r.checkpoint}
    if r.train is not None:
        out["train"] = _fit_to_dict(r.train)
    if r.prune:
        out["prune"] = [_prune_to_dict(p) for p in r.prune]
    out["finetune"] = _fit_to_dict(r.finetune)
    out["eval"] = _drop_none({**dataclasses.asdict(r.eval), "attacks": list(r.eval.attacks)})
    out["analysis"] = _drop_none({**dataclasses.asdict(r.analysis), "norms": list(r.analysis.norms)})
    if r.sweep:
        out["sweep"] = {a.key: {"label": a.label, "values": list(a.values)} for a in r.sweep}
    return out


def _fit_to_dict(f: FitConfig) -> dict[str, Any]:
    d: dict[str, Any] = {
        "epochs": f.epochs,
        "lr": f.lr,
        "optimizer": f.optimizer,
        "momentum": f.momentum,
        "weight_decay": f.weight_decay,
        "scheduler": f.scheduler,
        "warmup_epochs": f.warmup_epochs,
        "min_lr": f.min_lr,
        "amp": f.amp,
    }
    if f.clip_grad_norm is not None:
        d["clip_grad_norm"] = f.clip_grad_norm
    if f.adversarial is not None:
        d["adversarial"] = _drop_none(dataclasses.asdict(f.adversarial))
    d["regularizers"] = [_reg_to_dict(r) for r in f.regularizers]
    return d


def _reg_to_dict(r: RegularizerSpec) -> dict[str, Any]:
    return {"kind": r.kind, "weight": r.weight, **r.options}


def _prune_to_dict(p: PruneConfig) -> dict[str, Any]:
    d: dict[str, Any] = {"method": p.method, "label": p.label}
    for key in ("eps", "ratio", "target_macs"):
        if getattr(p, key):
            d[key] = list(getattr(p, key))
    if p.match is not None:
        d["match"] = p.match
    d.update(p.pruner_options())
    if p.regularizers:
        d["regularizers"] = [_reg_to_dict(r) for r in p.regularizers]
    return d


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize plain data to TOML: tables, arrays (arrays of tables where they hold only
    tables), strings, integers, floats, booleans. ``None`` values are skipped (TOML has no
    null). ``tomllib.loads(to_toml(d)) == d`` for such data without ``None``."""
    lines: list[str] = []
    _emit_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _emit_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    # top-level tables and arrays of tables become [sections] / [[sections]]; anything
    # deeper is written inline, the way recipes are written by hand
    top = not path
    for k, v in table.items():
        if v is None or (top and (_is_table(v) or _is_table_array(v))):
            continue
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    if not top:
        return
    for k, v in table.items():
        if _is_table(v):
            lines += ["", f"[{_toml_key(k)}]"]
            _emit_table(v, [k], lines)
        elif _is_table_array(v):
            for item in v:
                lines += ["", f"[[{_toml_key(k)}]]"]
                _emit_table(item, [k], lines)


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, Mapping) for x in v)


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_string(k)


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        items = [f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(v, Path):
        return _toml_string(str(v))
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# =========================================================================== the runner


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_recipe` produced: the run directory, every row of
    ``results.jsonl`` and the summary markdown. ``is_main`` is False on the non-zero ranks
    of a ``torchrun`` job (they write nothing)."""

    run_dir: Path
    rows: tuple[dict[str, Any], ...]
    summary: str
    is_main: bool = True


@dataclass(frozen=True)
class _Job:
    """One model of the plan: the dense model or one pruning setting."""

    id: str
    order: int
    variant: str
    variant_index: int
    seed: int
    label: str
    method: str
    key: str  # ASCII setting key, part of the id ("eps=0.05", "match=epsilon:eps=0.05")
    setting: str  # display form ("ε=0.05", "matched to epsilon ε=0.05")
    params: dict[str, float]  # eps / ratio / target_macs
    match: str | None = None  # id of the job whose MACs this one is solved to
    entry: PruneConfig | None = None


def plan_jobs(recipe: Recipe) -> list[_Job]:
    """Every model the recipe produces, in execution order: per variant and seed the dense
    model, then each [[prune]] entry's settings (entries with ``match`` after the entry
    they match)."""
    jobs: list[_Job] = []
    variants = recipe.variants()
    for vi, (vname, vrecipe) in enumerate(variants):
        vtag = f"v{vi}/" if len(variants) > 1 else ""
        entries = [e for e in vrecipe.prune if e.match is None] + [
            e for e in vrecipe.prune if e.match is not None
        ]
        for seed in recipe.seeds:
            base = f"{vtag}seed{seed}"
            order = 0
            jobs.append(_Job(f"{base}/dense", order, vname, vi, seed, "dense", "dense", "-", "–", {}))
            for entry in entries:
                if entry.match is None:
                    for setting in entry.settings():
                        (name, value), = setting.items()
                        order += 1
                        key = f"{name}={value:g}"
                        jobs.append(
                            _Job(
                                f"{base}/{entry.label}/{key}", order, vname, vi, seed, entry.label,
                                entry.method, key, _display_setting(name, value), dict(setting),
                                entry=entry,
                            )
                        )
                else:
                    targets = [j for j in jobs if j.label == entry.match and j.seed == seed and j.variant_index == vi]
                    for target in targets:
                        order += 1
                        jobs.append(
                            _Job(
                                f"{base}/{entry.label}/match={target.label}:{target.key}", order, vname, vi,
                                seed, entry.label, entry.method, f"match={target.label}:{target.key}",
                                f"matched to {target.label} {target.setting}", {}, match=target.id,
                                entry=entry,
                            )
                        )
    return jobs


def describe_plan(recipe: Recipe) -> str:
    """A readable list of the models a run of ``recipe`` produces."""
    jobs = plan_jobs(recipe)
    lines = [f"Plan: {len(jobs)} models ({len(recipe.seeds)} seed(s), {len(recipe.variants())} variant(s))"]
    for job in jobs:
        lines.append(f"  {job.id}  [{job.method}] {job.setting}")
    return "\n".join(lines)


def _display_setting(name: str, value: float) -> str:
    return {"eps": f"ε={value:g}", "ratio": f"ratio={value:g}", "target_macs": f"MACs={value:.0%}"}[name]


RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.toml"


def run_recipe(
    recipe: Recipe,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> RunResult:
    """Run a recipe and write its results.

    Per variant (``[sweep]`` combination) and seed: train the dense model (or load
    ``[checkpoint]``), evaluate it; then for every ``[[prune]]`` entry and setting prune a
    copy (``match`` entries: solved with ``target_macs`` = the MACs fraction the matched
    model reached), finetune it, evaluate it (clean, AutoAttack, MACs, params, latency).
    Every model is evaluated as reloaded from its saved checkpoint, so an interrupted run
    continued with ``resume=True`` gives the same numbers as an uninterrupted one.

    Writes ``<output>/<name>/<YYYYmmdd-HHMMSS>/`` (or ``run_dir``): ``config.toml`` (the
    resolved recipe), ``results.jsonl`` (one row per model, appended as each finishes),
    ``summary.md`` and ``pareto.png`` (see :mod:`robustprune.report`), ``checkpoints/``
    (``save_pruned`` files) and ``analysis/`` (when ``[analysis]`` asks for it).

    Args:
        recipe: a validated recipe (:func:`load_recipe`).
        run_dir: the directory to write; default a new timestamped one.
        resume: continue ``run_dir`` or, without it, the latest run of this recipe: rows in
            ``results.jsonl`` are kept, unfinished training resumes from its epoch
            checkpoint. The resolved recipe must equal the run's ``config.toml``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        progress: tqdm bars for training and attacks.

    Under ``torchrun`` every rank runs the same plan (training and attacks are shared
    between the ranks); rank 0 alone writes files.
    """
    from robustprune import distributed

    dev = distributed.resolve_device(device)
    ctx = distributed.setup(dev)
    jobs = plan_jobs(recipe)
    variants = dict(recipe.variants())
    _preflight(recipe, variants)
    out = _resolve_run_dir(recipe, run_dir, resume, ctx)
    state = _RunState(out, ctx.is_main)
    state.prepare(recipe, resume)
    distributed.barrier(ctx)
    done = {row["id"]: row for row in state.read_rows()} if resume else {}
    if done:
        logger.info("resuming %s: %d of %d models already finished", out, len(done), len(jobs))
    else:
        logger.info("run %s: %d models", out, len(jobs))
    runner = _Runner(recipe, variants, state, dev, ctx, progress)
    started = time.perf_counter()
    finished = 0
    for i, job in enumerate(jobs):
        if job.id in done:
            runner.remember(job, done[job.id])
            continue
        t0 = time.perf_counter()
        row = runner.run_job(job)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        state.append_row(row)
        runner.remember(job, row)
        finished += 1
        logger.info("[%d/%d] %s", i + 1, len(jobs), _row_line(row))
        if i + 1 < len(jobs) and jobs[i + 1].seed != job.seed:
            state.render()  # a partial summary after every seed
    distributed.barrier(ctx)
    rows = tuple(state.read_rows())
    summary = state.render()
    logger.info("finished %d models in %.1f s", finished, time.perf_counter() - started)
    return RunResult(out, rows, summary, ctx.is_main)


def _row_line(row: dict[str, Any]) -> str:
    robust = row.get("robust_accuracy")
    return (
        f"{row['id']}: MACs {row['macs_kept']:.1%}, params {row['params_kept']:.1%}, "
        f"clean {row['clean_accuracy']:.1%}"
        + (f", robust {robust:.1%}" if robust is not None else "")
        + f" ({row.get('seconds', 0):.1f} s)"
    )


def _preflight(recipe: Recipe, variants: Mapping[str, Recipe]) -> None:
    """Fail before anything is written: unknown model options, a missing checkpoint or one
    that does not fit the data."""
    from robustprune.checkpoint import load_pruned
    from robustprune.data import create_datasets, dataset_info
    from robustprune.errors import InvalidArgumentError
    from robustprune.models import create_model, model_spec

    for r in variants.values():
        if r.data.options:  # the options may change the shape (digits size=...)
            d = r.data
            info = create_datasets(d.name, root=d.root, download=d.download, seed=0, **d.options).info
        else:  # static for the torchvision datasets: no file access yet
            info = dataset_info(r.data.name)
        if r.checkpoint is not None:
            if not Path(r.checkpoint).is_file():
                raise RecipeError(f"{r.source}: checkpoint.path = {r.checkpoint!r} does not exist.")
            spec = model_spec(load_pruned(r.checkpoint))
            shape = tuple(spec.input_shape) if spec is not None and spec.input_shape else None
            classes = spec.kwargs.get("num_classes") if spec is not None else None
            if (shape is not None and shape != tuple(info.input_shape)) or (
                classes is not None and classes != info.num_classes
            ):
                raise RecipeError(
                    f"{r.source}: checkpoint.path = {r.checkpoint!r} holds a model for inputs "
                    f"{shape} and {classes} classes, but [data] '{r.data.name}' gives inputs "
                    f"{tuple(info.input_shape)} and {info.num_classes} classes; use the data the "
                    "model was trained on (dataset options such as size= included)."
                )
            continue
        assert r.model is not None
        try:
            create_model(
                r.model.name, num_classes=info.num_classes, input_shape=info.input_shape,
                mean=info.mean, std=info.std, **r.model.options,
            )
        except RobustPruneError as exc:
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if bad:
                allowed = _model_options(r.model.name)
                raise RecipeError(
                    f"{r.source}: unknown key 'model.{bad.group(1)}' in [model] (model "
                    f"'{r.model.name}'). Allowed keys: name"
                    + (f", {', '.join(allowed)}" if allowed else "")
                    + "."
                ) from exc
            if isinstance(exc, (InvalidArgumentError, RecipeError)):
                raise RecipeError(f"{r.source}: [model] {exc}") from exc
            raise


def _model_options(name: str) -> list[str]:
    """The architecture options of a registered model (its class's keyword arguments)."""
    from robustprune.models import create_model

    try:
        model = create_model(name)
    except RobustPruneError:
        return []
    params = inspect.signature(type(model).__init__).parameters
    skip = {"self", "num_classes", "input_shape", "mean", "std"}
    return [p for p, v in params.items() if p not in skip and v.kind is not inspect.Parameter.VAR_KEYWORD]


def _resolve_run_dir(recipe: Recipe, run_dir: Any, resume: bool, ctx: Any) -> Path:
    from robustprune import distributed

    base = Path(recipe.output) / recipe.name
    chosen: Path | None = None
    error: str | None = None
    if ctx.is_main:
        if run_dir is not None:
            chosen = Path(run_dir)
            if not resume and (chosen / RESULTS_FILE).is_file() and (chosen / RESULTS_FILE).stat().st_size:
                error = f"Run directory '{chosen}' already has results; pass --resume to continue it or choose another directory."
        elif resume:
            previous = sorted(p for p in base.glob("*") if (p / CONFIG_FILE).is_file()) if base.is_dir() else []
            if previous:
                chosen = previous[-1]
            else:
                logger.warning("--resume: no previous run of '%s' under %s; starting a new one", recipe.name, base)
        if chosen is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            chosen = base / stamp
            n = 1
            while chosen.exists():
                chosen = base / f"{stamp}-{n}"
                n += 1
    shared = distributed.all_gather_objects((str(chosen) if chosen else None, error), ctx)[0]
    if shared[1]:
        raise RecipeError(shared[1])
    return Path(shared[0])


class _RunState:
    """The files of one run directory; only the main process writes."""

    def __init__(self, directory: Path, writer: bool) -> None:
        self.dir = directory
        self.writer = writer
        self.results = directory / RESULTS_FILE

    def prepare(self, recipe: Recipe, resume: bool) -> None:
        config = self.dir / CONFIG_FILE
        if config.is_file() and resume:
            try:
                stored = tomllib.loads(config.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise RecipeError(f"{config} is not valid TOML ({exc}); cannot resume this run.") from exc
            current = tomllib.loads(recipe.to_toml())
            diff = _dict_diff(stored, current)
            if diff:
                raise RecipeError(
                    f"Cannot resume {self.dir}: the recipe differs from its {CONFIG_FILE} in "
                    f"{', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}. Resume with the "
                    "same recipe and --set values, or start a new run without --resume."
                )
        if not self.writer:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not config.is_file():
            _atomic_write(config, recipe.to_toml())
        self._repair()

    def read_rows(self) -> list[dict[str, Any]]:
        from robustprune.report import read_results

        return read_results(self.results) if self.results.is_file() else []

    def append_row(self, row: dict[str, Any]) -> None:
        if not self.writer:
            return
        line = json.dumps(row, default=_json_default, ensure_ascii=False) + "\n"
        with open(self.results, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def render(self) -> str:
        from robustprune.report import render_report, summary_markdown

        if not self.writer:
            return summary_markdown(self.read_rows())
        return render_report(self.dir)

    def _repair(self) -> None:
        """Drop a last line cut short by a killed run, so appended rows stay valid JSON."""
        if not self.results.is_file():
            return
        data = self.results.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            logger.warning("%s: dropping an incomplete last line", self.results)
            self.results.write_bytes(keep)


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _dict_diff(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _dict_diff(x, y, f"{prefix}{i}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):
        return obj.item()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)  # type: ignore[arg-type]
    return str(obj)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")


class _Runner:
    """Executes :class:`_Job` s: holds the data of the current variant and the dense model
    of the current (variant, seed), both rebuilt when those change."""

    def __init__(
        self, recipe: Recipe, variants: Mapping[str, Recipe], state: _RunState, device: Any, ctx: Any, progress: bool
    ) -> None:
        self.recipe = recipe
        self.variants = variants
        self.state = state
        self.device = device
        self.ctx = ctx
        self.progress = progress
        self.rows: dict[str, dict[str, Any]] = {}
        self._data_key: str | None = None
        self._datasets: Any = None
        self._dense_key: tuple[int, int] | None = None
        self._dense: Any = None

    # ------------------------------------------------------------------ bookkeeping

    def remember(self, job: _Job, row: dict[str, Any]) -> None:
        self.rows[job.id] = row

    def _seed_dir(self, job: _Job) -> Path:
        vtag = f"v{job.variant_index}" if len(self.variants) > 1 else ""
        return self.state.dir / "checkpoints" / vtag / f"seed{job.seed}"

    def _checkpoint_path(self, job: _Job) -> Path:
        if job.label == "dense":
            r = self.variants[job.variant]
            if r.checkpoint is not None:
                return Path(r.checkpoint)
            return self._seed_dir(job) / "dense.pt"
        return self._seed_dir(job) / f"{_slug(job.label)}__{_slug(job.key)}.pt"

    # ------------------------------------------------------------------ data and models

    def _loaders(self, r: Recipe, seed: int) -> Any:
        """Train/test loaders: the dataset (split, synthetic data) is the same for every
        seed; the seed sets the shuffle order (and, through fit, the initialization and
        the attacks' randomness)."""
        import torch
        from torch.utils.data import DataLoader

        from robustprune.data import Loaders, create_datasets

        key = json.dumps(dataclasses.asdict(r.data), sort_keys=True, default=str)
        if key != self._data_key:
            self._datasets = create_datasets(
                r.data.name, root=r.data.root, download=r.data.download, seed=0, **r.data.options
            )
            self._data_key = key
        ds = self._datasets
        train = DataLoader(
            ds.train, batch_size=r.data.batch_size, shuffle=True,
            generator=torch.Generator().manual_seed(seed), num_workers=r.data.num_workers,
        )
        test = DataLoader(
            ds.test, batch_size=r.data.test_batch_size or 2 * r.data.batch_size, shuffle=False,
            num_workers=r.data.num_workers,
        )
        return Loaders(train, test, ds.info)

    def _example_inputs(self) -> Any:
        x = self._datasets.test[0][0]
        return x.unsqueeze(0).clone()

    def _dense_model(self, job: _Job, r: Recipe, loaders: Any) -> Any:
        """The dense model of (variant, seed), trained once and saved; always returned as
        reloaded from its checkpoint (a fresh copy each call)."""
        import torch

        from robustprune import distributed
        from robustprune.checkpoint import load_pruned, save_pruned
        from robustprune.models import create_model

        key = (job.variant_index, job.seed)
        if self._dense_key != key:
            dense_job = dataclasses.replace(job, label="dense", id="", key="-")
            path = self._checkpoint_path(dense_job)
            if not path.is_file():
                assert r.model is not None and r.train is not None
                info = loaders.info
                torch.manual_seed(job.seed)
                model = create_model(
                    r.model.name, num_classes=info.num_classes, input_shape=info.input_shape,
                    mean=info.mean, std=info.std, **r.model.options,
                )
                logger.info("training the dense %s (seed %d, %d epochs)", r.model.name, job.seed, r.train.epochs)
                result = self._fit(model, loaders, r.train, (), job.seed, path.parent / "train")
                if self.ctx.is_main:
                    save_pruned(model, path, meta=self._meta(r, job, fit=result.to_dict()))
                distributed.barrier(self.ctx)
                self._cleanup(path.parent / "train")
            self._dense = load_pruned(path, map_location="cpu")
            self._dense_key = key
        return copy.deepcopy(self._dense)

    def _fit(
        self, model: Any, loaders: Any, cfg: FitConfig, extra: Sequence[RegularizerSpec], seed: int, ckpt_dir: Path
    ) -> Any:
        from robustprune import train
        from robustprune.attacks import AdversarialConfig

        adv = None
        if cfg.adversarial is not None:
            adv = AdversarialConfig(**dataclasses.asdict(cfg.adversarial))
        return train.fit(
            model,
            loaders,
            cfg.epochs,
            lr=cfg.lr,
            optimizer=cfg.optimizer,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            scheduler=None if cfg.scheduler == "none" else cfg.scheduler,
            warmup_epochs=cfg.warmup_epochs,
            min_lr=cfg.min_lr,
            clip_grad_norm=cfg.clip_grad_norm,
            adversarial=adv,
            regularizers=_build_regularizers([*cfg.regularizers, *extra]),
            amp=cfg.amp,
            device=self.device,
            checkpoint_dir=ckpt_dir,
            seed=seed,
            progress=self.progress,
        )

    def _cleanup(self, directory: Path) -> None:
        """Remove a finished fit's epoch checkpoints (the final model is saved)."""
        import shutil

        if self.ctx.is_main and directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)

    def _meta(self, r: Recipe, job: _Job, **extra: Any) -> dict[str, Any]:
        return {
            "recipe": r.name,
            "variant": job.variant,
            "seed": job.seed,
            "label": job.label,
            "setting": job.setting,
            "data": {"name": r.data.name, "options": dict(r.data.options)},
            **extra,
        }

    # ------------------------------------------------------------------ one job

    def run_job(self, job: _Job) -> dict[str, Any]:
        import torch

        from robustprune import distributed
        from robustprune.checkpoint import load_pruned, save_pruned

        r = self.variants[job.variant]
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        loaders = self._loaders(r, job.seed)
        dense = self._dense_model(job, r, loaders)
        example = self._example_inputs()
        timing["dense"] = time.perf_counter() - t0
        path = self._checkpoint_path(job)
        row: dict[str, Any] = {
            "id": job.id,
            "variant": job.variant,
            "variant_index": job.variant_index,
            "seed": job.seed,
            "order": job.order,
            "label": job.label,
            "method": job.method,
            "setting": job.setting,
            "setting_key": job.key,
            "settings": dict(job.params),
        }
        if job.label == "dense":
            model = dense
            row.update(prune=None, fit=None, pruned_macs_kept=1.0)
        else:
            assert job.entry is not None
            params = dict(job.params)
            if job.match is not None:
                target = self.rows[job.match]
                params = {"target_macs": float(target["pruned_macs_kept"])}
                row.update(matched_to=job.match, target_macs=params["target_macs"])
                row["settings"] = dict(params)
            report_dict: dict[str, Any]
            if path.is_file():  # pruned and finetuned before an interruption
                model = load_pruned(path, map_location="cpu")
                meta = getattr(model, "robustprune_meta", {}) or {}
                report_dict, fit_dict = meta["prune_report"], meta.get("fit")
            else:
                model = dense
                t0 = time.perf_counter()
                with torch.enable_grad():
                    try:
                        report = _prune(model, job.entry, params, example)
                    except RobustPruneError as exc:
                        raise type(exc)(f"{job.id}: {exc}") from exc
                report_dict = report.to_dict()
                report_dict.setdefault("macs_kept", report.macs_kept)
                report_dict.setdefault("params_kept", report.params_kept)
                timing["prune"] = time.perf_counter() - t0
                fit_dict = None
                t0 = time.perf_counter()
                if r.finetune.epochs > 0:
                    ft_dir = path.with_name(path.stem + ".finetune")
                    result = self._fit(model, loaders, r.finetune, job.entry.regularizers, job.seed, ft_dir)
                    fit_dict = result.to_dict()
                    fit_dict.pop("checkpoint", None)  # removed once the model is saved
                timing["finetune"] = time.perf_counter() - t0
                if self.ctx.is_main:
                    save_pruned(
                        model.cpu(), path, meta=self._meta(r, job, prune_report=report_dict, fit=fit_dict)
                    )
                distributed.barrier(self.ctx)
                if r.finetune.epochs > 0:
                    self._cleanup(path.with_name(path.stem + ".finetune"))
                model = load_pruned(path, map_location="cpu")
            row.update(prune=report_dict, fit=fit_dict, pruned_macs_kept=float(report_dict["macs_kept"]))
        t0 = time.perf_counter()
        row.update(self._evaluate(model, r, loaders, example, job))
        timing["eval"] = time.perf_counter() - t0
        row["checkpoint"] = str(path)
        if r.analysis.models == "all" or (r.analysis.models == "dense" and job.label == "dense"):
            t0 = time.perf_counter()
            row["analysis"] = self._analyze(model, r, example, job)
            timing["analysis"] = time.perf_counter() - t0
        row["timing_s"] = {k: round(v, 2) for k, v in timing.items()}
        return row

    def _evaluate(self, model: Any, r: Recipe, loaders: Any, example: Any, job: _Job) -> dict[str, Any]:
        from robustprune.evaluate import evaluate

        e = r.eval
        result = evaluate(
            model,
            loaders.test,
            norm=e.norm,
            eps=e.eps,
            attacks="standard" if e.attacks == ("standard",) else e.attacks,
            n_examples=e.n_examples,
            example_inputs=example,
            latency=e.latency,
            device=self.device,
            seed=job.seed,
            batch_size=e.batch_size,
            n_iter=e.n_iter,
            progress=self.progress,
        )
        dense_id = job.id.rsplit("/", 2)[0] + "/dense" if job.label != "dense" else job.id
        dense_row = self.rows.get(dense_id)
        macs0 = dense_row["macs"] if dense_row else result.macs
        params0 = dense_row["params"] if dense_row else result.params
        robust = result.robust_accuracy
        # robust accuracy is measured on the first n examples: compare it with the clean
        # accuracy on those same examples (clean_accuracy is over the whole test split)
        subset_clean = result.robust.clean_accuracy if result.robust is not None else None
        settings = {
            "norm": e.norm, "eps": e.eps, "attacks": list(e.attacks), "n_iter": e.n_iter,
            "n_clean": result.n,
        }
        if result.robust is not None:
            settings["n"] = result.robust.n
        return {
            "macs": int(result.macs),
            "params": int(result.params),
            "macs_kept": result.macs / macs0 if macs0 else 1.0,
            "params_kept": result.params / params0 if params0 else 1.0,
            "clean_accuracy": result.clean_accuracy,
            "robust_accuracy": robust,
            "robust_clean_accuracy": subset_clean,
            "robust_over_clean": (
                None if robust is None or subset_clean is None
                else (robust / subset_clean if subset_clean > 0 else 0.0)
            ),
            "latency_ms": dict(result.latency_ms or {}),
            "eval_settings": settings,
            "eval": result.to_dict(),
        }

    def _analyze(self, model: Any, r: Recipe, example: Any, job: _Job) -> dict[str, Any]:
        import torch

        from robustprune.analysis import analyze

        a = r.analysis
        xs, ys = [], []
        for i in range(min(a.n_examples, len(self._datasets.test))):
            x, y = self._datasets.test[i]
            xs.append(x)
            ys.append(int(y))
        batch = (torch.stack(xs), torch.tensor(ys))
        delta: Any = a.delta
        if delta is None and r.eval.eps is not None:
            from robustprune.analysis import DEFAULT_DELTA

            delta = {**DEFAULT_DELTA, {"Linf": "inf", "L2": "2"}[r.eval.norm]: r.eval.eps}
        report = analyze(
            model.eval(), example_inputs=example, data=batch, norms=a.norms,
            conv_norm=a.conv_norm, eps=a.eps, delta=delta, max_samples=a.n_examples,
        )
        stem = _slug(job.id.replace("/", "__"))
        if self.state.writer:
            out = self.state.dir / "analysis"
            out.mkdir(parents=True, exist_ok=True)
            _atomic_write(out / f"{stem}.json", json.dumps(report.to_dict(), indent=2, default=_json_default))
            _atomic_write(out / f"{stem}.md", report.to_markdown())
        return {**_analysis_summary(report), "report": f"analysis/{stem}.md"}


def _analysis_summary(report: Any) -> dict[str, Any]:
    """The few numbers of an analysis report that go into a results row: per-layer means
    over the non-head layers of the spectral ``k/n`` and structure factor ``S_sigma``, and
    per norm the naive Lipschitz bound, the gap bound, the certified fraction and the
    dominant-direction audit accuracy."""

    def mean(values: list[float]) -> float | None:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    body = [row for row in report.rows if not row.is_head]
    out: dict[str, Any] = {
        "k_sigma_fraction": mean([row.spectral.k / row.spectral.n for row in body]),
        "structure_factor_sigma": mean([row.spectral.structure_factor for row in body]),
        "beta_sigma": mean([row.spectral.beta for row in body]),
    }
    for p, bound in report.bounds.items():
        out[f"lipschitz_naive_{p}"] = bound.naive
        out[f"gap_bound_{p}"] = bound.gap
        out[f"certified_{p}"] = bound.certified_fraction
    for p, audit in (report.audit or {}).items():
        out[f"audit_accuracy_{p}"] = audit.accuracy
        out[f"audit_random_accuracy_{p}"] = audit.random_accuracy
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in out.items()}


def _prune(model: Any, entry: PruneConfig, params: Mapping[str, float], example: Any) -> Any:
    from robustprune.pruners import prune

    return prune(model, method=entry.method, example_inputs=example, **dict(params), **entry.pruner_options())


def _build_regularizers(specs: Sequence[RegularizerSpec]) -> list[Any]:
    """The regularizer modules of ``specs`` (weight-0 ones are left out: they add nothing)."""
    specs = [spec for spec in specs if spec.weight != 0]
    if not specs:
        return []
    from robustprune import regularizers as regs

    out = []
    for spec in specs:
        cls = getattr(regs, REGULARIZERS[spec.kind][0])
        out.append(cls(spec.weight, **spec.options))
    return out
