"""Structured pruning: ε-targeted, fixed-ratio and global baselines, spectral factorization.

``prune(model, eps=0.05)`` is the one-line entry point; the pruner classes expose
``plan(model, example_inputs) -> Plan`` and ``apply(model, plan) -> PruningReport``.
``ChannelPruner(rule)`` prunes channels by any :class:`Rule` (rules.py); ``PRUNERS`` maps
each ``method`` name to its class.

Layout: plan.py (the data), base.py (the Pruner base), channel.py (ChannelPruner),
rules.py (how many channels each group keeps), importance.py (channel scores -> theta),
groups.py / tracing.py / surgery.py / attention.py (the channel machinery), counting.py
(MACs/params), search.py (target MACs), spectral.py + factorize.py (low rank), history.py
(recorded steps and their replay), _tp.py (every use of torch-pruning), epsilon.py and
baselines.py (the public channel pruners).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from robustprune._inputs import Inputs, infer_example_inputs
from robustprune.errors import InvalidArgumentError, UnknownNameError
from robustprune.pruners.base import Pruner
from robustprune.pruners.baselines import FixedRatioPruner, GlobalMagnitudePruner
from robustprune.pruners.channel import ChannelPruner
from robustprune.pruners.counting import count_macs_params
from robustprune.pruners.epsilon import EpsilonPruner
from robustprune.pruners.groups import Group
from robustprune.pruners.history import replay_history
from robustprune.pruners.importance import GroupL2Importance, Importance
from robustprune.pruners.plan import GroupPlan, Plan, PruningReport, ReportRow
from robustprune.pruners.rules import EpsilonRule, FixedRatioRule, GlobalMagnitudeRule, Rule
from robustprune.pruners.spectral import SpectralPruner

__all__ = [
    "prune",
    "PRUNERS",
    "Pruner",
    "ChannelPruner",
    "EpsilonPruner",
    "FixedRatioPruner",
    "GlobalMagnitudePruner",
    "SpectralPruner",
    "Plan",
    "GroupPlan",
    "PruningReport",
    "ReportRow",
    "GroupL2Importance",
    "Importance",
    "Rule",
    "EpsilonRule",
    "FixedRatioRule",
    "GlobalMagnitudeRule",
    "Group",
    "count_macs_params",
    "infer_example_inputs",
    "replay_history",
    "Inputs",
]

#: ``method`` name -> pruner class
PRUNERS: dict[str, type[Pruner]] = {
    "epsilon": EpsilonPruner,
    "fixed": FixedRatioPruner,
    "global": GlobalMagnitudePruner,
    "spectral": SpectralPruner,
}


def prune(
    model: nn.Module,
    eps: Any = None,
    target_macs: float | None = None,
    example_inputs: Inputs | None = None,
    method: str = "epsilon",
    **kw: Any,
) -> PruningReport:
    """Prune ``model`` in place and return the :class:`PruningReport`.

    Args:
        model: the model; its train/eval mode and ``requires_grad`` flags are kept, and it
            is either fully pruned or, on any error, left unchanged.
        eps: per-group relative residual in (0, 1) (``"epsilon"``, ``"spectral"``), a float
            or ``{module-name-glob: ε}``.
        target_macs: instead of ``eps``/``ratio``, the fraction of the original MACs to keep.
        example_inputs: a batch the model accepts; inferred when omitted for models from
            :func:`robustprune.models.create_model`, timm and torchvision classifiers, and
            models whose first layer is a Linear.
        method: ``"epsilon"`` (:class:`EpsilonPruner`), ``"fixed"`` (:class:`FixedRatioPruner`),
            ``"global"`` (:class:`GlobalMagnitudePruner`) or ``"spectral"`` (:class:`SpectralPruner`).
        **kw: options of the pruner: ``ratio=`` for fixed/global, ``q``, ``importance``,
            ``round_to``, ``min_keep``, ``ignored_layers`` (the classifier head is always
            ignored), ``macs_tolerance``, ``progress``.
    """
    if not isinstance(method, str) or method not in PRUNERS:
        raise UnknownNameError(f"Unknown pruning method {method!r}; choose one of {', '.join(PRUNERS)}.")
    cls = PRUNERS[method]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise InvalidArgumentError(
            f"prune(method={method!r}) got unknown option(s) {', '.join(unknown)}; "
            f"{cls.__name__} accepts {', '.join(accepted)}."
        )
    if method in ("fixed", "global"):
        if eps is not None:
            raise InvalidArgumentError(
                f"eps applies to method='epsilon' and 'spectral'; method={method!r} takes ratio= "
                "(the fraction of channels to remove) or target_macs=."
            )
        pruner = cls(target_macs=target_macs, **kw)
    else:
        pruner = cls(eps=eps, target_macs=target_macs, **kw)
    return pruner(model, example_inputs)
