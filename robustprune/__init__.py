"""robustprune: robustness-aware structured pruning for PyTorch.

The public API is deliberately small; everything else is importable from its module
(``robustprune.metrics``, ``robustprune.data``, ...). Names are resolved lazily so that
``import robustprune`` stays fast and does not import torch-pruning or AutoAttack until
they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "prune": "robustprune.pruners",
    "analyze": "robustprune.analysis",
    "EpsilonPruner": "robustprune.pruners",
    "FixedRatioPruner": "robustprune.pruners",
    "GlobalMagnitudePruner": "robustprune.pruners",
    "SpectralPruner": "robustprune.pruners",
    "BetaDispersion": "robustprune.regularizers",
    "Alignment": "robustprune.regularizers",
    "evaluate": "robustprune.evaluate",
    "save_pruned": "robustprune.checkpoint",
    "load_pruned": "robustprune.checkpoint",
    "RobustPruneError": "robustprune.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'robustprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # static tools see the real objects
    from robustprune.analysis import analyze as analyze
    from robustprune.checkpoint import load_pruned as load_pruned
    from robustprune.checkpoint import save_pruned as save_pruned
    from robustprune.errors import RobustPruneError as RobustPruneError
    from robustprune.evaluate import evaluate as evaluate
    from robustprune.pruners import EpsilonPruner as EpsilonPruner
    from robustprune.pruners import FixedRatioPruner as FixedRatioPruner
    from robustprune.pruners import GlobalMagnitudePruner as GlobalMagnitudePruner
    from robustprune.pruners import SpectralPruner as SpectralPruner
    from robustprune.pruners import prune as prune
    from robustprune.regularizers import Alignment as Alignment
    from robustprune.regularizers import BetaDispersion as BetaDispersion
