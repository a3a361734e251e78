"""Writing recipes: dataclasses to plain TOML-able data, and that data to TOML text
(with ``tomli-w``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import tomli_w

__all__ = ["OMIT_EMPTY", "to_data", "to_toml"]

#: field metadata: leave the field out of the TOML when it is empty
OMIT_EMPTY: Mapping[str, Any] = {"omit_empty": True}


def to_data(obj: Any) -> dict[str, Any]:
    """The fields of dataclass ``obj`` as plain data, the way a recipe writes them:
    ``None`` values are left out (TOML has no null), so are empty fields marked
    :data:`OMIT_EMPTY`; an ``options`` dict is merged into its table; nested dataclasses
    become tables and tuples arrays."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or (f.metadata.get("omit_empty") and not value):
            continue
        if f.name == "options":
            out.update(_plain(value))
        else:
            out[f.name] = _plain(value)
    return out


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize plain data to TOML: tables, arrays, strings, integers, floats, booleans.
    ``None`` values are skipped (TOML has no null); ``tomllib.loads(to_toml(d)) == d`` for
    such data without ``None``. Other types raise :class:`TypeError`."""
    return tomli_w.dumps(_drop_none(data))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_data(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return [_drop_none(v) for v in value if v is not None]
    return value
