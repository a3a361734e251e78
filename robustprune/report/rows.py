"""The rows of ``results.jsonl`` and the fields the report reads from them, with the
fallbacks that keep older files (written before a field existed) rendering.

A row is one evaluated model. Required keys::

    variant, seed, label, method, setting, order,
    macs, params, macs_kept, clean_accuracy, robust_accuracy (None: clean only)

Optional keys, each with its fallback when absent:

- ``compare_key``: rows with the same ``(variant, seed, compare_key)`` were pruned to the
  same MACs target and are comparable. Fallback: ``"dense"`` for the dense model; for a
  ``matched_to`` row the key of the row it matched; ``"target_macs=<f>"`` for a setting with
  a MACs target; ``"<label>/<setting_key>"`` otherwise.
- ``reference`` / ``scratch``: the labels of the row's default-pipeline entry (fixed ratio,
  one-shot, same finetune) and of its compact-from-scratch entry (None: none). Fallback:
  reference = the label of the first entry (by ``order``) of the same variant whose method is
  ``"fixed"``; no scratch.
- ``cost``: ``{"epochs": int, "attack_steps": int}``, the total training cost of the model,
  the dense share included. Fallback: unknown (shown as "–").
- ``pruned_nothing``: the pruning removed no unit. Fallback: a pruned row whose
  ``pruned_macs_kept`` (else ``macs_kept``) is 1.
- ``robust_clean_accuracy`` / ``robust_over_clean``, ``params_kept``, ``variant_index``,
  ``target_macs``, ``matched_to``, ``setting_key``, ``analysis``, ``eval_settings``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from robustprune.errors import RecipeError

__all__ = [
    "RESULTS_FILE",
    "Row",
    "read_results",
    "check_row",
    "ordered",
    "group_key",
    "is_dense",
    "compare_key",
    "reference_label",
    "scratch_label",
    "cost",
    "pruned_nothing",
    "robust_over_clean",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"

#: one results row (a JSON object)
Row = dict[str, Any]


def read_results(path: str | os.PathLike[str]) -> list[Row]:
    """The rows of a ``results.jsonl`` (a run directory or the file itself), each checked
    with :func:`check_row`.

    A last line cut short by a killed run is skipped with a warning; any other line that is
    not a valid row is a :class:`~robustprune.errors.RecipeError` naming the file and line."""
    if not isinstance(path, (str, os.PathLike)):
        raise RecipeError(f"read_results needs the path of a run directory or results file, got {type(path).__name__}.")
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise RecipeError(
            f"No results file at '{p}'. Pass a run directory written by `robustprune run` "
            "(runs/<name>/<timestamp>)."
        )
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{p}: not a results file (not UTF-8 text: {exc}).") from None
    except OSError as exc:
        raise RecipeError(f"Cannot read '{p}': {exc.strerror or exc}.") from None
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1 and line.lstrip().startswith("{"):  # a row cut short, not other text
                logger.warning("%s: skipping an incomplete last line (an interrupted write)", p)
                continue
            raise RecipeError(f"{p}, line {i + 1}: not valid JSON ({exc}).") from exc
        rows.append(check_row(row, f"{p}, line {i + 1}"))
    return rows


#: the fields of a row the report reads: (field, kinds, required); kinds name JSON types
#: ("int", "number": finite, "str", "bool", "table", "null")
_FIELDS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("label", ("str",), True),
    ("setting", ("str",), True),
    ("seed", ("int",), True),
    ("macs", ("number",), True),
    ("params", ("number",), True),
    ("macs_kept", ("number",), True),
    ("clean_accuracy", ("number",), True),
    ("robust_accuracy", ("number", "null"), False),
    ("id", ("str",), False),
    ("variant", ("str",), False),
    ("method", ("str",), False),
    ("order", ("int",), False),
    ("variant_index", ("int",), False),
    ("setting_key", ("str",), False),
    ("params_kept", ("number",), False),
    ("pruned_macs_kept", ("number", "null"), False),
    ("robust_clean_accuracy", ("number", "null"), False),
    ("robust_over_clean", ("number", "null"), False),
    ("target_macs", ("number", "null"), False),
    ("compare_key", ("str", "null"), False),
    ("reference", ("str", "null"), False),
    ("scratch", ("str", "null"), False),
    ("matched_to", ("str", "null"), False),
    ("pruned_nothing", ("bool",), False),
    ("settings", ("table", "null"), False),
    ("cost", ("table", "null"), False),
    ("eval_settings", ("table", "null"), False),
    ("analysis", ("table", "null"), False),
)
#: the range of the numbers that have one (accuracies are fractions; counts are >= 0)
_RANGES: dict[str, tuple[float, float]] = {
    "clean_accuracy": (0.0, 1.0),
    "robust_accuracy": (0.0, 1.0),
    "robust_clean_accuracy": (0.0, 1.0),
    "macs": (0.0, math.inf),
    "params": (0.0, math.inf),
    "macs_kept": (0.0, math.inf),
    "params_kept": (0.0, math.inf),
}
#: the tables among them whose values the report reads as numbers (or null)...
_NUMBER_TABLES = ("settings", "cost", "analysis")
#: ...but for these entries, which are text: the analysis report's path in the run folder
_STR_ENTRIES = (("analysis", "report"),)


def check_row(row: object, where: str) -> Row:
    """``row`` if it is a results row the report can read (a JSON object whose fields have
    the types :data:`_FIELDS` lists, numbers finite), else a
    :class:`~robustprune.errors.RecipeError` naming ``where`` and the field."""
    if not isinstance(row, dict):
        raise RecipeError(f"{where}: a row must be a JSON object, got {_kind(row)}; is this a results.jsonl?")
    for name, kinds, required in _FIELDS:
        if name not in row:
            if required:
                raise RecipeError(f"{where}: the row has no '{name}' field; is this a results.jsonl?")
            continue
        _expect(row[name], kinds, name, where)
        if name in _RANGES and row[name] is not None and not _RANGES[name][0] <= row[name] <= _RANGES[name][1]:
            raise RecipeError(f"{where}: field '{name}' must be in [{_RANGES[name][0]:g}, {_RANGES[name][1]:g}], "
                              f"got {row[name]!r}.")
    for name in _NUMBER_TABLES:
        for key, value in (row.get(name) or {}).items():
            kinds = ("str",) if (name, key) in _STR_ENTRIES else ("number", "null")
            _expect(value, kinds, f"{name}.{key}", where)
    ev = row.get("eval_settings") or {}
    if "eps" in ev:
        _expect(ev["eps"], ("number", "null"), "eval_settings.eps", where)
    if not all(isinstance(a, str) for a in _as_list(ev.get("attacks", []))):
        _expect(ev["attacks"], ("array of str",), "eval_settings.attacks", where)
    return row


def _expect(value: object, kinds: tuple[str, ...], name: str, where: str) -> None:
    kind = _kind(value)
    if kind in kinds or (kind == "int" and "number" in kinds):
        return
    shown = json.dumps(value, default=str)
    raise RecipeError(
        f"{where}: field '{name}' must be {' or '.join(k if k != 'number' else 'a finite number' for k in kinds)}, "
        f"got {shown[:60]}{'...' if len(shown) > 60 else ''}."
    )


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [None]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "table"
    return "array" if isinstance(value, list) else type(value).__name__


def ordered(rows: Iterable[Row]) -> list[Row]:
    """The rows in the run's order: by variant, then dense first and each entry's settings
    in recipe order (stable, so seeds keep their order)."""
    return sorted(rows, key=lambda r: (r.get("variant_index", 0), r.get("order", 0)))


def group_key(row: Row) -> tuple[str, str, str]:
    """``(variant, label, setting)``: the rows aggregated over seeds into one summary line."""
    return (row.get("variant", ""), row["label"], row["setting"])


def is_dense(row: Row) -> bool:
    """Whether the row is a dense (unpruned) model."""
    return row.get("method") == "dense" or row["label"] == "dense"


def compare_key(row: Row, by_id: dict[str, Row] | None = None) -> str:
    """The row's ``compare_key`` (see the module docstring for the fallback); ``by_id``
    (rows by ``id``) resolves the key of a ``matched_to`` row in older files."""
    if row.get("compare_key") is not None:
        return str(row["compare_key"])
    if is_dense(row):
        return "dense"
    matched = row.get("matched_to")
    if matched and by_id and matched in by_id and by_id[matched] is not row:
        return compare_key(by_id[matched], None)
    target = (row.get("settings") or {}).get("target_macs")
    if target is not None and not matched:
        return f"target_macs={target:g}"
    return f"{row['label']}/{row.get('setting_key', row['setting'])}"


def reference_label(row: Row, rows: Iterable[Row]) -> str | None:
    """The label of the row's default-pipeline entry (fixed ratio, one-shot, same finetune),
    or None; older files: the first ``"fixed"`` entry of the row's variant."""
    if "reference" in row:
        return row["reference"]
    variant = row.get("variant", "")
    fixed = [r for r in rows if r.get("method") == "fixed" and r.get("variant", "") == variant]
    return min(fixed, key=lambda r: r.get("order", 0))["label"] if fixed else None


def scratch_label(row: Row) -> str | None:
    """The label of the row's compact-from-scratch entry, or None (older files: none)."""
    return row.get("scratch")


def cost(row: Row, key: str) -> float | None:
    """``cost[key]`` (``"epochs"`` or ``"attack_steps"``), None where the row lacks it."""
    value = (row.get("cost") or {}).get(key)
    return None if value is None else float(value)


def pruned_nothing(row: Row) -> bool:
    """Whether the row is a pruned model whose pruning removed no unit."""
    if "pruned_nothing" in row:
        return bool(row["pruned_nothing"])
    if is_dense(row) or row.get("method") == "scratch":
        return False
    kept = row.get("pruned_macs_kept", row.get("macs_kept"))
    return kept is not None and float(kept) >= 1.0 - 1e-12


def robust_over_clean(row: Row) -> float | None:
    """Robust over clean accuracy on the same (attacked) examples; None without robust."""
    if row.get("robust_accuracy") is None:
        return None
    if row.get("robust_over_clean") is not None:
        return float(row["robust_over_clean"])
    clean = row.get("robust_clean_accuracy", row["clean_accuracy"])
    return row["robust_accuracy"] / clean if clean > 0 else 0.0
