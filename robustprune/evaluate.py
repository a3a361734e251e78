"""Transitional alias of :mod:`robustprune.evaluation` (the module was renamed).

Delete this file once ``robustprune/__init__.py``, ``robustprune/cli.py`` and
``robustprune/recipe.py`` import from :mod:`robustprune.evaluation`. Until then
``robustprune.evaluate`` names both this module and the function; importing the module
binds the package attribute ``robustprune.evaluate`` to it, so the module is made callable
(calling it calls :func:`robustprune.evaluation.evaluate`), as before the rename.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from robustprune.evaluation import (
    LATENCY_BATCHES,
    EvalResult,
    count_macs_params,
    evaluate,
    measure_latency,
)

__all__ = ["EvalResult", "evaluate", "count_macs_params", "measure_latency", "LATENCY_BATCHES"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> EvalResult:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
