"""Which modules are prunable, how a weight is matricized, and how layers connect.

- :mod:`robustprune.layers.modules`: the prunable types, matricization (rows = output units),
  the classifier head and first layer, and the modules robustprune adds to models
  (:class:`Normalize`, :class:`LowRankLinear`, :class:`MeanPad`, :class:`Center`).
- :mod:`robustprune.layers.graph`: the :mod:`torch.fx` trace, consecutive pairs and chains.
- :mod:`robustprune.layers.fold`: BatchNorm and input-normalization folding.
"""

from __future__ import annotations

from robustprune.layers.fold import fold_batchnorm as fold_batchnorm
from robustprune.layers.fold import fold_for_analysis as fold_for_analysis
from robustprune.layers.graph import Chain as Chain
from robustprune.layers.graph import Pair as Pair
from robustprune.layers.graph import consecutive_pairs as consecutive_pairs
from robustprune.layers.graph import path_between as path_between
from robustprune.layers.graph import sequential_chain as sequential_chain
from robustprune.layers.modules import PRUNABLE_TYPES as PRUNABLE_TYPES
from robustprune.layers.modules import Center as Center
from robustprune.layers.modules import LowRankLinear as LowRankLinear
from robustprune.layers.modules import MeanPad as MeanPad
from robustprune.layers.modules import Normalize as Normalize
from robustprune.layers.modules import classifier_head as classifier_head
from robustprune.layers.modules import first_layer as first_layer
from robustprune.layers.modules import get_submodule_parent as get_submodule_parent
from robustprune.layers.modules import is_prunable as is_prunable
from robustprune.layers.modules import matricize as matricize
from robustprune.layers.modules import prunable_layers as prunable_layers

__all__ = [
    "Normalize",
    "LowRankLinear",
    "MeanPad",
    "Center",
    "PRUNABLE_TYPES",
    "is_prunable",
    "prunable_layers",
    "matricize",
    "classifier_head",
    "first_layer",
    "Pair",
    "Chain",
    "consecutive_pairs",
    "sequential_chain",
    "path_between",
    "fold_batchnorm",
    "fold_for_analysis",
    "get_submodule_parent",
]
