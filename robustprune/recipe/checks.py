"""What a recipe may say: the allowed values of each choice (read from the library's
registries, never copied) and the small checks the recipe's own dataclasses run in their
constructors.

Every check raises :class:`~robustprune.errors.InvalidArgumentError` with ``argument`` set
to the offending field, so that the recipe parser can point at the TOML key that holds it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from robustprune.attacks import ADVERSARIAL_KINDS, NORMS, AdversarialConfig
from robustprune.data import dataset_options
from robustprune.errors import InvalidArgumentError
from robustprune.pruners import PRUNERS
from robustprune.pruners.importance import IMPORTANCES as _IMPORTANCE_REGISTRY
from robustprune.pruners.schedules import SCHEDULE_KINDS, Schedule
from robustprune.regularizers import REGULARIZERS
from robustprune.train import AMP_MODES, SCHEDULERS, FitConfig

__all__ = [
    "METHODS",
    "IMPORTANCES",
    "DATA_METHODS",
    "needs_attack",
    "ANALYSIS_MODELS",
    "ANALYSIS_NORMS",
    "CONV_NORMS",
    "SETTING_KEYS",
    "PRUNER_OPTIONS",
    "method_settings",
    "method_options",
    "check_prune_settings",
    "check_pruner_options",
    "check_prune_entries",
    "check_scheduled_entry",
    "dataset_options",
    "regularizer_options",
    "choices_of",
    "check_choices",
    "check_int",
    "check_number",
    "check_numbers",
    "check_budget",
    "check_warmup",
]

#: the methods of a ``[[prune]]`` entry: every pruner, and the scratch baseline
METHODS: tuple[str, ...] = (*PRUNERS, "scratch")
#: the channel importances a ``[[prune]]`` entry may name (``robustprune.pruners.importance``)
IMPORTANCES: tuple[str, ...] = tuple(_IMPORTANCE_REGISTRY)
#: the pruning methods that measure on data with an attack (``data=``, ``adversarial=``)
DATA_METHODS: tuple[str, ...] = tuple(
    m for m, cls in PRUNERS.items() if "data" in inspect.signature(cls).parameters
)
#: which models ``[analysis]`` analyzes
ANALYSIS_MODELS = ("none", "dense", "all")
#: the operator norms :func:`robustprune.analysis.analyze` reports
ANALYSIS_NORMS = ("2", "inf")
#: how :func:`robustprune.analysis.analyze` measures convolutions
CONV_NORMS = ("matricized", "operator")
#: the pruning settings a ``[[prune]]`` entry sweeps (one model per value)
SETTING_KEYS = ("eps", "ratio", "target_macs")
#: the pruner options a ``[[prune]]`` entry may pass on
PRUNER_OPTIONS = ("q", "round_to", "min_keep", "widths", "n_examples")

#: allowed values of library-config fields whose type hints do not list them
_LIBRARY_CHOICES: dict[tuple[type, str], tuple[str, ...]] = {
    (FitConfig, "scheduler"): (*SCHEDULERS, "none"),
    (FitConfig, "amp"): AMP_MODES,
    (AdversarialConfig, "kind"): ADVERSARIAL_KINDS,
    (AdversarialConfig, "norm"): NORMS,
    (Schedule, "kind"): SCHEDULE_KINDS,
}


def method_settings(method: str) -> tuple[str, ...]:
    """The setting keys a pruning method takes, read from its pruner's signature
    (``match`` solves for ``target_macs``): ``("eps", "target_macs", "match")`` for
    ``"epsilon"``; the scratch baseline takes ``match`` only."""
    if method == "scratch":
        return ("match",)
    params = inspect.signature(PRUNERS[method]).parameters
    keys = tuple(k for k in SETTING_KEYS if k in params)
    return (*keys, "match") if "target_macs" in params else keys


def method_options(method: str) -> tuple[str, ...]:
    """The :data:`PRUNER_OPTIONS` a pruning method's pruner accepts."""
    if method == "scratch":
        return ()
    params = inspect.signature(PRUNERS[method]).parameters
    return tuple(k for k in PRUNER_OPTIONS if k in params)


def check_prune_settings(method: str, given: Sequence[str]) -> None:
    """A ``[[prune]]`` entry gives exactly one setting, one its method takes."""
    allowed = method_settings(method)
    for key in given:
        if key not in allowed:
            raise InvalidArgumentError(
                f"method '{method}' does not take '{key}'; method '{method}' takes one of: "
                f"{', '.join(allowed)}.",
                argument=key,
            )
    if len(given) != 1:
        raise InvalidArgumentError(
            f"method '{method}' needs exactly one of {', '.join(allowed)}; got {', '.join(given) or 'none'}."
        )


def check_pruner_options(method: str, options: Mapping[str, Any]) -> None:
    """Each option is one the method's pruner takes, with a value the pruner accepts (it
    is built once per option to find out)."""
    allowed = method_options(method)
    for key, value in options.items():
        if key not in allowed:
            raise InvalidArgumentError(
                f"method '{method}' does not take '{key}' (its pruner options: {', '.join(allowed) or 'none'}).",
                argument=key,
            )
        try:
            PRUNERS[method](target_macs=0.5, **_probe(method), **{key: value})
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(str(exc), argument=key) from None


def check_scheduled_entry(entry: Any) -> None:
    """The schedule, importance and scratch rules of one ``[[prune]]`` entry."""
    if entry.importance is not None:
        if entry.importance not in IMPORTANCES:
            raise InvalidArgumentError(
                f"importance must be one of {', '.join(repr(i) for i in IMPORTANCES)}, got {entry.importance!r}.",
                argument="importance",
            )
        if "importance" not in inspect.signature(PRUNERS.get(entry.method, _NoImportance)).parameters:
            raise InvalidArgumentError(
                f"method '{entry.method}' takes no importance (it does not prune channels).", argument="importance"
            )
    if entry.method == "scratch" and (entry.schedule is not None or entry.regularizers or entry.finetune):
        raise InvalidArgumentError(
            "a scratch entry trains the matched widths like the dense model ([train]); it takes "
            "no schedule, finetune or regularizers.",
            argument="method",
        )
    if entry.kind != "one-shot" and (entry.eps or entry.ratio):
        raise InvalidArgumentError(
            f"a {entry.kind} schedule drives the pruner to a MACs target: give target_macs = [...] "
            "or match, not eps/ratio.",
            argument="schedule",
        )


class _NoImportance:
    def __init__(self) -> None: ...


def _probe(method: str) -> dict[str, Any]:
    """Stand-in data and attack for building a data-measuring pruner to check its options."""
    if method not in DATA_METHODS:
        return {}
    import torch

    return {"data": (torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)),
            "adversarial": AdversarialConfig(eps=0.1, steps=1)}


def needs_attack(entry: Any) -> bool:
    """Whether a ``[[prune]]`` entry measures with an attack (sensitivity, adv-taylor)."""
    return entry.method in DATA_METHODS or entry.importance == "adv-taylor"


def check_prune_entries(entries: Sequence[Any], compare: Any = None, *, trained: bool = True) -> None:
    """The ``[[prune]]`` entries of a recipe have distinct labels, a ``match`` names
    another entry that has explicit settings, the labels to compare with exist, and the
    entries that train from initialisation (scratch, during-training) have a ``[train]``."""
    labels = [e.label for e in entries]
    for i, e in enumerate(entries):
        if labels.count(e.label) > 1:
            raise InvalidArgumentError(
                f"label '{e.label}' is used by more than one [[prune]] entry; give each entry a "
                'distinct label (e.g. label = "epsilon+beta").',
                argument=f"prune[{i}].label",
            )
        if e.method == "scratch" and e.match is None:
            raise InvalidArgumentError(
                "a scratch entry needs match = \"<label>\": the entry whose per-layer widths it trains from scratch.",
                argument=f"prune[{i}].match",
            )
        if not trained and (e.method == "scratch" or e.kind == "during-training"):
            raise InvalidArgumentError(
                f"{'a scratch entry' if e.method == 'scratch' else 'a during-training schedule'} trains "
                "from initialisation and needs [train] (the recipe starts from a [checkpoint]).",
                argument=f"prune[{i}].method",
            )
        for key in ("reference", "scratch"):
            _check_compared(entries, getattr(e, key), key, f"prune[{i}].{key}", "")
        if e.match is None:
            continue
        target = next((x for x in entries if x.label == e.match), None)
        if target is None or target is e or target.match is not None:
            others = [x.label for x in entries if x.match is None and x is not e]
            raise InvalidArgumentError(
                "match must be the label of another [[prune]] entry that has explicit settings; "
                f"allowed values: {', '.join(repr(o) for o in others) or 'none'}.",
                argument=f"prune[{i}].match",
            )
    for key in ("reference", "scratch"):
        _check_compared(entries, None if compare is None else getattr(compare, key), key, f"compare.{key}", "[compare] ")


def _check_compared(entries: Sequence[Any], name: str | None, key: str, argument: str, section: str) -> None:
    """``reference``/``scratch`` name an entry (``scratch``: a ``method = "scratch"`` one)."""
    if name is None:
        return
    allowed = [e.label for e in entries if key == "reference" or e.method == "scratch"]
    if name not in allowed:
        what = "a [[prune]] entry" if key == "reference" else 'a method = "scratch" entry'
        raise InvalidArgumentError(
            f"{section}{key} must be the label of {what}; allowed values: "
            f"{', '.join(repr(x) for x in allowed) or 'none'}.",
            argument=argument,
        )


def check_warmup(epochs: int, warmup_epochs: int) -> None:
    """The learning-rate warmup lies inside the training: ``warmup_epochs <= epochs``."""
    if warmup_epochs > epochs:
        raise InvalidArgumentError(
            f"warmup_epochs = {warmup_epochs} is longer than the training (epochs = {epochs}); "
            "use warmup_epochs <= epochs.",
            argument="warmup_epochs",
        )


def regularizer_options(kind: str) -> list[str] | None:
    """The options (besides ``weight``) of a registered regularizer, from its class's
    signature (None: unknown kind)."""
    cls = REGULARIZERS.get(kind)
    if cls is None:
        return None
    return [p for p in inspect.signature(cls).parameters if p != "weight"]


def choices_of(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values of field ``name`` of dataclass ``cls``: its ``choices`` metadata
    (a tuple, or a callable giving one) or, for the library's configs, their registry."""
    for f in dataclasses.fields(cls):
        if f.name == name and "choices" in f.metadata:
            choices = f.metadata["choices"]
            return tuple(choices() if callable(choices) else choices)
    for klass in cls.__mro__:
        if (klass, name) in _LIBRARY_CHOICES:
            return _LIBRARY_CHOICES[(klass, name)]
    return None


def check_choices(obj: Any) -> None:
    """Every field of dataclass ``obj`` with ``choices`` metadata holds allowed values
    (each item, for a tuple)."""
    for f in dataclasses.fields(obj):
        if "choices" not in f.metadata:
            continue
        value = getattr(obj, f.name)
        choices = choices_of(type(obj), f.name) or ()
        items = value if isinstance(value, tuple) else (value,)
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise InvalidArgumentError(
                f"{f.name} must be {'a non-empty list of ' if isinstance(value, tuple) else ''}"
                f"one of {', '.join(repr(c) for c in choices)}, got {value!r}.",
                argument=f.name,
            )


def check_int(name: str, value: Any, low: int, *, optional: bool = False) -> None:
    """``value`` is an integer >= ``low`` (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}.", argument=name)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``value`` is a finite number within the bounds (``low_open``: ``> low``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise InvalidArgumentError(
            f"{name} must be a finite number{_bounds(low, high, low_open, high_open)}, got {value!r}.",
            argument=name,
        )


def check_numbers(name: str, values: Sequence[Any], check: Callable[[str, Any], None]) -> None:
    """Every value passes ``check`` and no value repeats (one model per value)."""
    for v in values:
        check(name, v)
    if len(set(values)) != len(values):
        raise InvalidArgumentError(
            f"{name} must hold distinct values (one model per value), got {list(values)}.", argument=name
        )


def check_budget(name: str, eps: Any, norm: str) -> None:
    """An attack budget on inputs in [0, 1]: > 0, and <= 1 for ``Linf``."""
    check_number(name, eps, 0.0, 1.0 if norm == "Linf" else None, low_open=True)


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " " + " and ".join(parts) if parts else ""
