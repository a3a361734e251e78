"""robustprune: robustness-aware structured pruning for PyTorch.

The public API is deliberately small and listed here in full; everything else is
importable from its module (``robustprune.metrics``, ``robustprune.data``,
``robustprune.train``, ...). See docs/architecture.md for where each part lives.
"""

from __future__ import annotations

__version__ = "0.3.2"

from robustprune.analysis import analyze as analyze
from robustprune.checkpoint import load_pruned as load_pruned
from robustprune.checkpoint import save_pruned as save_pruned
from robustprune.errors import RobustPruneError as RobustPruneError
from robustprune.evaluation import evaluate as evaluate
from robustprune.export import export as export
from robustprune.models import create_model as create_model
from robustprune.models import load_weights as load_weights
from robustprune.pruners import EpsilonPruner as EpsilonPruner
from robustprune.pruners import FixedRatioPruner as FixedRatioPruner
from robustprune.pruners import GlobalMagnitudePruner as GlobalMagnitudePruner
from robustprune.pruners import SpectralPruner as SpectralPruner
from robustprune.pruners import prune as prune
from robustprune.regularizers import Alignment as Alignment
from robustprune.regularizers import BetaDispersion as BetaDispersion

__all__ = [
    "__version__",
    "prune",
    "analyze",
    "EpsilonPruner",
    "FixedRatioPruner",
    "GlobalMagnitudePruner",
    "SpectralPruner",
    "BetaDispersion",
    "Alignment",
    "evaluate",
    "export",
    "create_model",
    "load_weights",
    "save_pruned",
    "load_pruned",
    "RobustPruneError",
]
