"""``render_report``: (re-)write a run directory's ``summary.md`` and ``pareto.png`` from
its ``results.jsonl``."""

from __future__ import annotations

import os
from pathlib import Path

from robustprune._io import atomic_write
from robustprune.errors import RecipeError
from robustprune.report.pareto import plot_pareto
from robustprune.report.rows import RESULTS_FILE, read_results
from robustprune.report.summary import summary_markdown

__all__ = ["SUMMARY_FILE", "PARETO_FILE", "render_report"]

SUMMARY_FILE = "summary.md"
PARETO_FILE = "pareto.png"


def render_report(run_dir: str | os.PathLike[str]) -> str:
    """Re-render ``summary.md`` and ``pareto.png`` of a run directory from its
    ``results.jsonl``; returns the summary markdown."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RecipeError(f"'{d}' is not a directory; pass a run directory (runs/<name>/<timestamp>).")
    rows = read_results(d)
    if not rows:
        raise RecipeError(f"'{d / RESULTS_FILE}' has no rows yet; nothing to report.")
    title = f"{d.parent.name} ({d.name})" if d.parent.name else d.name
    text = summary_markdown(rows, title=title)
    try:
        atomic_write(d / SUMMARY_FILE, text)
        plot_pareto(rows, d / PARETO_FILE, title=title)
    except OSError as exc:  # a read-only run directory, a folder named summary.md, a full disk
        raise RecipeError(
            f"Cannot write the report into '{d}' ({exc.strerror or exc}: {exc.filename or d}); "
            "check that the run directory is writable and holds no folder named "
            f"{SUMMARY_FILE} or {PARETO_FILE}."
        ) from exc
    return text
