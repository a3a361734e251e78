"""Building the recipe's dataclasses from parsed TOML, driven by the dataclasses.

:func:`build` walks ``dataclasses.fields()`` and their type hints: a key that names no
field is refused with the allowed keys (and a "did you mean"); a value of the wrong type
is refused with what was expected; a dataclass-typed field is a sub-table, a tuple of
dataclasses an array of tables, and a field called ``options`` collects the table's other
keys (those the class's ``option_names`` allows). Then the constructor validates the
values, and the ``argument`` of the :class:`~robustprune.errors.InvalidArgumentError` it
raises is mapped back to the TOML key. Every error is a :class:`RecipeError` that names
the file, the dotted key (``[train] lr`` is ``train.lr``, ``prune[1].eps``) and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from robustprune.attacks import AdversarialConfig
from robustprune.errors import InvalidArgumentError, RecipeError
from robustprune.recipe.checks import choices_of

__all__ = ["Where", "build", "convert", "format_value", "lookup"]

_MISSING: Any = object()
#: names the type hints of the library's configs may use without importing them at run time
_HINT_NAMES = {"AdversarialConfig": AdversarialConfig, "Mapping": Mapping, "Any": Any}


@dataclass(frozen=True)
class Where:
    """The file being read and the keys that came from ``--set``: what every error
    message starts with."""

    source: str
    overridden: frozenset[str] = frozenset()

    def at(self, key: str) -> str:
        """The source, marked when ``key`` (or a table above it) was set with ``--set``."""
        plain = re.sub(r"\[(\d+)\]", r".\1", key)
        hit = any(plain == o or plain.startswith(o + ".") or o.startswith(plain + ".") for o in self.overridden)
        return f"{self.source} (value from --set)" if hit else self.source

    def invalid(self, key: str, value: Any, expected: str) -> NoReturn:
        raise RecipeError(f"{self.at(key)}: {key} = {format_value(value)} is invalid: expected {expected}.")

    def not_allowed(self, key: str, value: Any, choices: Sequence[str]) -> NoReturn:
        msg = f"{self.at(key)}: {key} = {format_value(value)} is invalid"
        msg += f"; allowed values: {', '.join(repr(c) for c in choices)}"
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
        close = difflib.get_close_matches(str(bad[0] if bad else value), [str(c) for c in choices], n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        raise RecipeError(msg + ".")

    def unknown(self, key: str, allowed: Sequence[str], section: str) -> NoReturn:
        msg = f"{self.at(key)}: unknown key '{key}' in {section}. Allowed keys: {', '.join(allowed)}"
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(allowed), n=1)
        if close:
            msg += f" (did you mean '{close[0]}'?)"
        raise RecipeError(msg + ".")

    def missing(self, key: str, hint: Any) -> NoReturn:
        if dataclasses.is_dataclass(hint):
            raise RecipeError(f"{self.source}: missing section [{key}].")
        raise RecipeError(f"{self.source}: missing key '{key}' (expected {_expected(hint)}).")

    def rejected(self, cls: type, path: str, raw: Mapping[str, Any], exc: InvalidArgumentError) -> NoReturn:
        """Re-raise a constructor's error at the TOML key its ``argument`` names."""
        if exc.argument is None:
            raise RecipeError(f"{self.at(path)}: {path}: {exc}" if path else f"{self.at(path)}: {exc}") from None
        key = join(path, exc.argument)
        value = lookup(raw, exc.argument)
        if value is _MISSING:
            raise RecipeError(f"{self.at(key)}: {key}: {exc}") from None
        choices = choices_of(cls, exc.argument) if "." not in exc.argument else None
        if choices and any(v not in choices for v in (value if isinstance(value, list) else [value])):
            self.not_allowed(key, value, choices)
        raise RecipeError(f"{self.at(key)}: {key} = {format_value(value)} is invalid: {exc}") from None


def build(cls: type, raw: Any, path: str, where: Where, **given: Any) -> Any:
    """An instance of dataclass ``cls`` from the TOML table ``raw`` found at ``path``;
    the fields in ``given`` are set by the caller (their keys in ``raw`` are its business)."""
    if not isinstance(raw, dict):
        where.invalid(path, raw, "a table")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in given and f.name != "options"]
    values = {name: convert(raw[name], hints[name], join(path, name), where) for name in names if name in raw}
    extra = [k for k in raw if k not in names and k not in given]
    section = f"[{path}]" if path else "the top level"
    if "options" in hints:
        allowed = cls.option_names(values)  # type: ignore[attr-defined]
        bad = [k for k in extra if allowed is not None and k not in allowed]
        if bad:
            where.unknown(join(path, bad[0]), [*names, *(allowed or ())], section)
        values["options"] = {k: raw[k] for k in extra}
    elif extra:
        where.unknown(join(path, extra[0]), names, section)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in values and f.name not in given:
            where.missing(join(path, f.name), hints[f.name])
    try:
        return cls(**values, **given)
    except InvalidArgumentError as exc:
        where.rejected(cls, path, raw, exc)


def convert(value: Any, hint: Any, key: str, where: Where) -> Any:
    """``value`` checked against (and converted to) the type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is False and any(dataclasses.is_dataclass(a) for a in options):
            return None  # `adversarial = false`: TOML has no null
        if len(options) == 1:
            return convert(value, options[0], key, where)
        for option in options:
            try:
                return _scalar(value, option)
            except _Bad:
                continue
        where.invalid(key, value, " or ".join(_expected(o) for o in options))
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key, where)
    if origin is tuple:
        items = value if isinstance(value, list) else [value]
        if dataclasses.is_dataclass(args[0]):
            return tuple(build(args[0], v, f"{key}[{i}]", where) for i, v in enumerate(items))
        try:
            return tuple(_scalar(v, args[0]) for v in items)
        except _Bad:
            where.invalid(key, value, f"an array of {_expected(args[0], plural=True)}")
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        if not isinstance(value, dict):
            where.invalid(key, value, "a table")
        return value
    try:
        return _scalar(value, hint)
    except _Bad:
        where.invalid(key, value, _expected(hint))


def join(path: str, key: str) -> str:
    """``join("train", "lr") == "train.lr"``; ``join("", "prune[1].eps") == "prune[1].eps"``."""
    return f"{path}.{key}" if path else key


def lookup(raw: Any, dotted: str) -> Any:
    """The value at ``"adversarial.eps"`` / ``"prune[1].match"`` in ``raw`` (or a sentinel)."""
    node = raw
    for part in re.findall(r"[^.\[\]]+", dotted):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def format_value(v: Any) -> str:
    """A value the way a recipe writes it (TOML-like), for messages and variant names."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {format_value(x)}" for k, x in v.items()) + " }"
    return str(v)


class _Bad(Exception):
    """A value does not have the type a hint asks for."""


def _scalar(value: Any, hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Literal:
        hint = type(typing.get_args(hint)[0])
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _Bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad
        return value
    if hint is float:
        return _number(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise _Bad
        return value
    raise _Bad


def _number(value: Any) -> float:
    """A finite number; ``"8/255"`` style fractions are convenient for budgets."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", value)
        try:
            value = float(m.group(1)) / float(m.group(2)) if m else value
        except (ValueError, ZeroDivisionError):
            raise _Bad from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise _Bad
    return float(value)


def _expected(hint: Any, *, plural: bool = False) -> str:
    if typing.get_origin(hint) is typing.Literal:
        hint = type(typing.get_args(hint)[0])
    singular, many = {
        bool: ("true or false", "booleans"),
        int: ("an integer", "integers"),
        float: ("a number", "numbers"),
        str: ("a non-empty string", "non-empty strings"),
    }.get(hint, ("a table", "tables"))
    return many if plural else singular


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, localns=_HINT_NAMES)
