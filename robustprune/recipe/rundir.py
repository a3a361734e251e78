"""The run directory ``<output>/<name>/<timestamp>/``: where it is, its ``config.toml``,
its ``results.jsonl`` (appended row by row, read back on resume) and the bookkeeping that
lets an interrupted run continue. Only the main process writes, every write through
:func:`robustprune._io.atomic_write`."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from robustprune import distributed
from robustprune._io import atomic_write
from robustprune.errors import RecipeError, RobustPruneError
from robustprune.recipe.config import Recipe
from robustprune.recipe.parse import parse_recipe
from robustprune.report import RESULTS_FILE, read_results, render_report, summary_markdown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["CONFIG_FILE", "RESULTS_FILE", "RunDir", "resolve_run_dir", "output_problem", "slug"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
_MISSING: Any = object()


def resolve_run_dir(recipe: Recipe, run_dir: Any, resume: bool, ctx: distributed.DistContext) -> Path:
    """``run_dir``, or with ``resume`` the latest run of ``recipe``, or a new timestamped
    directory; decided on the main process and shared with every rank. Nothing is created;
    a directory that cannot be written, or ``resume`` with nothing to resume, is a
    :class:`~robustprune.errors.RecipeError`."""
    chosen: Path | None = None
    error: str | None = None
    if ctx.is_main:
        try:
            chosen = _choose_run_dir(recipe, run_dir, resume)
        except RecipeError as exc:
            error = str(exc)
    shared = distributed.all_gather_objects((str(chosen) if chosen else None, error), ctx)[0]
    if shared[1]:
        raise RecipeError(shared[1])
    return Path(shared[0])


def output_problem(path: str | os.PathLike[str], *, directory: bool) -> str | None:
    """Why ``path`` cannot be written as a directory (``directory=True``) or as a file, or
    None: it exists as the other kind, a folder above it is a file, or the folder it would
    be written in is not writable. Nothing is created."""
    p = Path(path)
    if p.exists():
        if directory != p.is_dir():
            return f"'{p}' is {'a file, not a directory' if directory else 'a directory, not a file'}"
        folder = p if directory else p.parent
    else:
        folder = p.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            return f"'{folder}' (on the way to '{p}') is a file, not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"'{folder}' is not writable"
    return None


def _choose_run_dir(recipe: Recipe, run_dir: Any, resume: bool) -> Path:
    base = Path(recipe.output) / recipe.name
    if run_dir is not None:
        chosen = Path(run_dir)
        problem = output_problem(chosen, directory=True)
        if problem:
            raise RecipeError(f"Cannot write the run directory: {problem}; pass a directory to --run-dir.")
        if resume and not (chosen / CONFIG_FILE).is_file():
            why = "it does not exist" if not chosen.exists() else f"it holds no {CONFIG_FILE}"
            raise RecipeError(
                f"--resume: nothing to resume in '{chosen}' ({why}); run without --resume to start a "
                "new run there, or pass the directory of an earlier run."
            )
        results = chosen / RESULTS_FILE
        if not resume and results.is_file() and results.stat().st_size:
            raise RecipeError(
                f"Run directory '{chosen}' already has results; pass --resume to continue it "
                "or choose another directory."
            )
        return chosen
    if resume:
        previous = sorted(p for p in base.glob("*") if (p / CONFIG_FILE).is_file()) if base.is_dir() else []
        if not previous:
            raise RecipeError(
                f"--resume: no earlier run of '{recipe.name}' under '{base}' to resume; run without "
                "--resume to start one, or pass --run-dir DIR."
            )
        return previous[-1]
    problem = output_problem(base, directory=True)
    if problem:
        raise RecipeError(f"{recipe.source or 'recipe'}: output = {json.dumps(recipe.output)}: cannot write runs there: {problem}.")
    return _new_dir(base)


class RunDir:
    """The files of one run directory; only the ``writer`` (the main process) writes."""

    def __init__(self, directory: Path, writer: bool) -> None:
        self.dir = directory
        self.writer = writer
        self.results = directory / RESULTS_FILE

    def prepare(self, recipe: Recipe, resume: bool) -> None:
        """:meth:`check` the directory, then create it, write ``config.toml`` and drop a
        row cut short by a killed run."""
        self.check(recipe, resume)
        if not self.writer:
            return
        config = self.dir / CONFIG_FILE
        self.dir.mkdir(parents=True, exist_ok=True)
        if not config.is_file():
            atomic_write(config, recipe.to_toml())
        self._repair()

    def check(self, recipe: Recipe, resume: bool) -> None:
        """A resumed run's ``config.toml`` equals ``recipe`` (writes nothing)."""
        config = self.dir / CONFIG_FILE
        if not (config.is_file() and resume):
            return
        try:
            stored = tomllib.loads(config.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{config} is not valid TOML ({exc}); cannot resume this run.") from exc
        diff = _dict_diff(_as_written_now(stored, config), tomllib.loads(recipe.to_toml()))
        if diff:
            raise RecipeError(
                f"Cannot resume {self.dir}: the recipe differs from its {CONFIG_FILE} in "
                f"{', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}. Resume with the "
                "same recipe and --set values, or start a new run without --resume."
            )

    def read_rows(self) -> list[dict[str, Any]]:
        """The rows of ``results.jsonl`` so far."""
        return read_results(self.results) if self.results.is_file() else []

    def append_row(self, row: dict[str, Any]) -> None:
        """Add one row to ``results.jsonl`` (the file is replaced atomically: a kill leaves
        the old rows or all of them)."""
        if not self.writer:
            return
        old = self.results.read_bytes() if self.results.is_file() else b""
        line = json.dumps(row, default=json_default, ensure_ascii=False) + "\n"
        atomic_write(self.results, old + line.encode("utf-8"))

    def write(self, relative: str, text: str) -> None:
        """Write a file of the run (``analysis/<job>.md``, ...), creating its folder."""
        if not self.writer:
            return
        path = self.dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)

    def render(self) -> str:
        """Re-render ``summary.md`` and ``pareto.png``; returns the summary."""
        if not self.writer:
            return summary_markdown(self.read_rows())
        return render_report(self.dir)

    def _repair(self) -> None:
        """Drop a last line cut short by a killed run, so appended rows stay valid JSON."""
        if not self.results.is_file():
            return
        data = self.results.read_bytes()
        if data and not data.endswith(b"\n"):
            logger.warning("%s: dropping an incomplete last line", self.results)
            atomic_write(self.results, data[: data.rfind(b"\n") + 1])


def slug(text: str) -> str:
    """``text`` as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")


def json_default(obj: Any) -> Any:
    """What ``json.dumps`` cannot write itself: paths, tuples, sets, tensors, reports."""
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


def _new_dir(base: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    chosen = base / stamp
    n = 1
    while chosen.exists():
        chosen = base / f"{stamp}-{n}"
        n += 1
    return chosen


def _as_written_now(stored: dict[str, Any], config: Path) -> dict[str, Any]:
    """A run's stored config as this version writes it: a key added since the run started
    (e.g. ``[eval] compile``) gets its default, so that only real differences stop a resume.
    A config this version no longer reads is compared as it is."""
    try:
        return tomllib.loads(parse_recipe(stored, source=str(config)).to_toml())
    except RobustPruneError:
        return stored


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
