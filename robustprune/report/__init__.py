"""Render a run's results: ``summary.md`` and ``pareto.png``.

Both are pure functions of ``results.jsonl`` (one JSON row per evaluated model, written by
:func:`robustprune.recipe.run_recipe`), so ``robustprune report RUN_DIR`` re-renders them
at any time, e.g. after a run was interrupted, and files written before a field existed
still render. The modules:

- :mod:`~robustprune.report.rows`: reading ``results.jsonl``; the fields read, their fallbacks.
- :mod:`~robustprune.report.stats`: mean ± std over seeds; paired differences, 95% CI, verdict.
- :mod:`~robustprune.report.verdicts`: every pruned setting against its reference and scratch
  baselines at the same MACs target, paired over seeds.
- :mod:`~robustprune.report.summary`: ``summary.md`` (main table, verdicts, notes, analysis).
- :mod:`~robustprune.report.pareto`: ``pareto.png`` (coinciding points kept visible).
- :mod:`~robustprune.report.render`: :func:`render_report` for a run directory.
"""

from robustprune.report.pareto import plot_pareto as plot_pareto
from robustprune.report.render import PARETO_FILE as PARETO_FILE
from robustprune.report.render import SUMMARY_FILE as SUMMARY_FILE
from robustprune.report.render import render_report as render_report
from robustprune.report.rows import RESULTS_FILE as RESULTS_FILE
from robustprune.report.rows import read_results as read_results
from robustprune.report.stats import PairedDifference as PairedDifference
from robustprune.report.stats import Stat as Stat
from robustprune.report.stats import paired_difference as paired_difference
from robustprune.report.summary import SummaryRow as SummaryRow
from robustprune.report.summary import summarize as summarize
from robustprune.report.summary import summary_markdown as summary_markdown
from robustprune.report.verdicts import Verdict as Verdict
from robustprune.report.verdicts import paired_verdicts as paired_verdicts

__all__ = [
    "RESULTS_FILE",
    "SUMMARY_FILE",
    "PARETO_FILE",
    "PairedDifference",
    "Stat",
    "SummaryRow",
    "Verdict",
    "paired_difference",
    "paired_verdicts",
    "plot_pareto",
    "read_results",
    "render_report",
    "summarize",
    "summary_markdown",
]
