"""Reading recipes: files, ``--set`` overrides and the variants of a ``[sweep]``."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robustprune.errors import InvalidArgumentError, RecipeError
from robustprune.recipe.checks import needs_attack
from robustprune.recipe.config import FinetuneConfig, PruneConfig, Recipe, SweepAxis
from robustprune.recipe.schema import Where, build, convert, format_value
from robustprune.recipe.serialize import to_data

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["load_recipe", "parse_recipe", "parse_override", "apply_override", "variants", "entry_finetune"]


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
    if not isinstance(path, (str, os.PathLike)):
        raise RecipeError(f"load_recipe needs the path of a .toml recipe, got {type(path).__name__}.")
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise RecipeError(f"overrides must be a list of 'key=value' strings, got {type(overrides).__name__}.")
    p = Path(path)
    if p.is_dir():
        raise RecipeError(f"'{p}' is a directory, not a recipe file; pass a .toml file such as recipes/digits-cnn.toml.")
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


def parse_recipe(
    raw: Mapping[str, Any], *, source: str | None = None, overridden: Iterable[str] = ()
) -> Recipe:
    """Validate parsed TOML data into a :class:`Recipe` (see :func:`load_recipe`); every
    ``[sweep]`` combination is validated too, now rather than halfway through a run."""
    if not isinstance(raw, Mapping):
        raise RecipeError(
            f"parse_recipe needs the recipe as a dict (tomllib.loads of a recipe file), got {type(raw).__name__}; "
            "for a file use load_recipe(path).")
    if isinstance(overridden, (str, bytes)) or not isinstance(overridden, Iterable):
        raise RecipeError(f"overridden must be a list of dotted keys, got {type(overridden).__name__}.")
    where = Where(source or "recipe", frozenset(overridden))
    if "source" in raw:  # set by the caller, not by the recipe
        where.unknown("source", [f.name for f in dataclasses.fields(Recipe) if f.name != "source"], "the top level")
    given: dict[str, Any] = {"source": source}
    if "checkpoint" in raw:
        given["checkpoint"] = _checkpoint(raw["checkpoint"], where)
    seeds = raw.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool):  # a count n: seeds 0..n-1
        given["seeds"] = tuple(range(seeds))
    if "sweep" in raw:
        given["sweep"] = _sweep(raw["sweep"], where)
    recipe = build(Recipe, dict(raw), "", where, **given)
    if recipe.eval.split == "val" and not recipe.data.validation:
        raise RecipeError(f"{where.at('eval.split')}: eval.split = \"val\" needs a [data] validation = <fraction> split.")
    for i, entry in enumerate(recipe.prune):  # every entry's own finetune is valid now, not mid-run
        ft = entry_finetune(recipe, entry)
        if needs_attack(entry) and ft.adversarial is None and (recipe.train is None or recipe.train.adversarial is None):
            raise RecipeError(
                f"{where.at(f'prune[{i}]')}: prune[{i}]: method '{entry.method}' with importance "
                f"{entry.importance or 'l2'!r} measures with an attack: give [finetune] or [train] an "
                "adversarial = { ... } config."
            )
        if entry.kind == "iterative" and ft.epochs < 1:
            raise RecipeError(
                f"{where.at(f'prune[{i}].schedule')}: prune[{i}].schedule: an iterative schedule prunes "
                "between finetune epochs, but the entry's finetune has epochs = 0; give [finetune] (or "
                "the entry's finetune = { ... }) epochs >= 1."
            )
        if entry.kind == "during-training" and recipe.train is not None:
            try:
                entry.schedule.epochs(recipe.train.epochs)
            except InvalidArgumentError as exc:
                raise RecipeError(f"{where.at(f'prune[{i}].schedule')}: prune[{i}].schedule.at: {exc}") from None
    if recipe.sweep:
        variants(recipe)
    return recipe


def entry_finetune(recipe: Recipe, entry: PruneConfig) -> FinetuneConfig:
    """The finetune of a ``[[prune]]`` entry: ``[finetune]`` with the entry's own
    ``finetune = { ... }`` fields on top (a nested table such as ``adversarial`` or
    ``distill`` replaces the section's)."""
    if not entry.finetune:
        return recipe.finetune
    index = next(i for i, e in enumerate(recipe.prune) if e is entry)
    raw = {**to_data(recipe.finetune), **copy.deepcopy(entry.finetune)}
    return build(FinetuneConfig, raw, f"prune[{index}].finetune", Where(recipe.source or "recipe"))


def variants(recipe: Recipe) -> list[tuple[str, Recipe]]:
    """``(variant name, recipe)`` for every combination of the sweep axes; a recipe
    without a sweep has the single variant ``""``."""
    if not recipe.sweep:
        return [("", recipe)]
    base = recipe.to_dict()
    base.pop("sweep", None)
    source = recipe.source or "recipe"
    out = []
    for combo in itertools.product(*(axis.values for axis in recipe.sweep)):
        raw = copy.deepcopy(base)
        parts = []
        for axis, value in zip(recipe.sweep, combo):
            try:
                apply_override(raw, axis.key, value)
            except RecipeError as exc:
                raise RecipeError(f"{source}: [sweep] {exc}") from None
            parts.append(f"{axis.label}={format_value(value)}")
        out.append((", ".join(parts), parse_recipe(raw, source=f"{source} [sweep {', '.join(parts)}]")))
    return out


_KEY_PART = re.compile(r'"[^"]+"|[A-Za-z0-9_\-+]+')
_KEY = re.compile(rf"(?:{_KEY_PART.pattern})(?:\.(?:{_KEY_PART.pattern}))*")


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; ``value`` is a TOML literal, or a bare
    string when it is not one (``data.name=synthetic``)."""
    if not isinstance(item, str):
        raise RecipeError(f"an override is a 'key=value' string (e.g. 'train.epochs=5'), got {type(item).__name__}.")
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
    _apply(raw, parts, value, (key, touched), [])
    return touched


def _apply(node: Any, parts: list[str], value: Any, out: tuple[str, list[str]], trail: list[str]) -> None:
    full, touched = out
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        for idx, target, sub in _entries(node, parts, full):
            _apply(target, sub, copy.deepcopy(value), out, [*trail, str(idx)])
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
    _apply(child, rest, value, out, [*trail, head])


def _entries(node: list[Any], parts: list[str], full: str) -> list[tuple[int, Any, list[str]]]:
    """The entries of an array of tables that ``parts`` addresses, with the rest of the
    key for each: ``(index, entry, rest)``."""
    if not all(isinstance(e, dict) for e in node):
        raise RecipeError(f"'{full}': cannot address inside an array of plain values.")
    head, rest = parts[0], parts[1:]
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
            targets, rest = ([e for e in node if head in e] or list(node)), parts
            if not targets:
                raise RecipeError(f"'{full}': the array is empty, nothing to set.")
    if not rest:
        raise RecipeError(f"'{full}': cannot replace an array entry; set a key inside it.")
    return [(next(i for i, e in enumerate(node) if e is t), t, rest) for t in targets]


def _checkpoint(value: Any, where: Where) -> str:
    """``checkpoint = "dense.pt"`` or ``[checkpoint] path = "dense.pt"``."""
    if not isinstance(value, dict):
        return convert(value, str, "checkpoint", where)
    for key in value:
        if key != "path":
            where.unknown(f"checkpoint.{key}", ["path"], "[checkpoint]")
    if "path" not in value:
        where.missing("checkpoint.path", str)
    return convert(value["path"], str, "checkpoint.path", where)


def _sweep(table: Any, where: Where) -> tuple[SweepAxis, ...]:
    """``[sweep]``: ``"dotted.key" = [values]`` or ``"dotted.key" = { label = ..., values = [...] }``."""
    if not isinstance(table, dict):
        where.invalid("sweep", table, "a table of dotted keys")
    axes = []
    for key, value in table.items():
        if isinstance(value, list):
            value = {"values": value}
        if not isinstance(value, dict):
            where.invalid(f"sweep.{key}", value, "a non-empty array of values, or { label = ..., values = [...] }")
        axes.append(build(SweepAxis, value, f"sweep.{key}", where, key=key))
    return tuple(axes)
