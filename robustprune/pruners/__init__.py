"""Structured pruning: ε-targeted, fixed-ratio and global baselines, robustness-sensitivity
allocation, spectral factorization.

``prune(model, eps=0.05)`` is the one-line entry point; the pruner classes expose
``plan(model, example_inputs) -> Plan`` and ``apply(model, plan) -> PruningReport``.
``ChannelPruner(rule)`` prunes channels by any :class:`Rule` (rules.py); ``PRUNERS`` maps
each ``method`` name to its class.

Layout: plan.py (the data), base.py (the Pruner base), channel.py (ChannelPruner),
rules.py (how many channels each group keeps), importance.py (channel scores -> theta,
``IMPORTANCES``), adversarial.py (checked data and attacks for robustness-aware scoring),
sensitivity.py (adversarial-loss sensitivity of each group and the allocation it implies),
prefix.py (reusing the unchanged start of a forward), groups.py / tracing.py / surgery.py /
attention.py (the channel machinery), support.py (models refused before tracing: meta
tensors, GRU/RNN, Swin attention, tied weights), counting.py (MACs/params), search.py (target MACs),
spectral.py + factorize.py (low rank), history.py (recorded steps and their replay), _tp.py
(every use of torch-pruning), epsilon.py, baselines.py and sensitivity_pruner.py (the public
channel pruners).
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
from robustprune.pruners.importance import (
    IMPORTANCES,
    AdvTaylorImportance,
    GroupL2Importance,
    Importance,
    make_importance,
)
from robustprune.pruners.plan import GroupPlan, Plan, PruningReport, ReportRow
from robustprune.pruners.rules import (
    EpsilonRule,
    FixedRatioRule,
    GlobalMagnitudeRule,
    PlanContext,
    Rule,
    SensitivityRule,
)
from robustprune.pruners.sensitivity_pruner import SensitivityPruner
from robustprune.pruners.spectral import SpectralPruner

__all__ = [
    "prune",
    "PRUNERS",
    "Pruner",
    "ChannelPruner",
    "EpsilonPruner",
    "FixedRatioPruner",
    "GlobalMagnitudePruner",
    "SensitivityPruner",
    "SpectralPruner",
    "Plan",
    "GroupPlan",
    "PruningReport",
    "ReportRow",
    "GroupL2Importance",
    "AdvTaylorImportance",
    "IMPORTANCES",
    "make_importance",
    "Importance",
    "Rule",
    "PlanContext",
    "EpsilonRule",
    "FixedRatioRule",
    "GlobalMagnitudeRule",
    "SensitivityRule",
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
    "sensitivity": SensitivityPruner,
    "spectral": SpectralPruner,
}

_EXAMPLES = {"sensitivity": "; e.g. data=loaders.test, adversarial=AdversarialConfig(kind='pgd', eps=8/255)"}


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
            is either fully pruned or, on any error, left unchanged. Models on the meta
            device are refused, and so is channel pruning of GRU/RNN layers, Swin attention
            and tied weights (:class:`~robustprune.errors.ModelNotSupportedError`); a model
            with no prunable layer gives an empty report and a ``UserWarning``.
        eps: per-group relative residual in (0, 1) (``"epsilon"``, ``"spectral"``), a float
            or ``{module-name-glob: ε}``.
        target_macs: instead of ``eps``/``ratio``, the fraction of the original MACs to keep
            (``1.0`` leaves the model unpruned).
        example_inputs: a batch the model accepts; inferred when omitted for models from
            :func:`robustprune.models.create_model`, timm and torchvision classifiers, and
            models whose first layer is a Linear.
        method: ``"epsilon"`` (:class:`EpsilonPruner`), ``"fixed"`` (:class:`FixedRatioPruner`),
            ``"global"`` (:class:`GlobalMagnitudePruner`), ``"sensitivity"``
            (:class:`SensitivityPruner`: needs ``data=`` and ``adversarial=``) or
            ``"spectral"`` (:class:`SpectralPruner`).
        **kw: options of the pruner: ``ratio=`` for fixed/global/sensitivity, ``q``,
            ``importance`` (e.g. ``"l2"`` or an :class:`AdvTaylorImportance`), ``round_to``,
            ``min_keep``, ``ignored_layers`` (the classifier head is always ignored),
            ``macs_tolerance``, ``progress``; ``data``, ``adversarial``, ``widths``,
            ``n_examples``, ``seed`` for sensitivity.
    """
    if not isinstance(method, str) or method not in PRUNERS:
        raise UnknownNameError(f"Unknown pruning method {method!r}; choose one of {', '.join(PRUNERS)}.")
    cls = PRUNERS[method]
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise InvalidArgumentError(
            f"prune(method={method!r}) got unknown option(s) {', '.join(unknown)}; "
            f"{cls.__name__} accepts {', '.join(params)}."
        )
    given = {**kw, "target_macs": target_macs, **({"eps": eps} if "eps" in params else {})}
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in given]
    if missing:
        raise InvalidArgumentError(
            f"prune(method={method!r}) needs {', '.join(k + '=' for k in missing)} (see {cls.__name__}"
            f"{_EXAMPLES.get(method, '')}).", argument=missing[0],
        )
    if "eps" not in params and eps is not None:
        takers = [m for m, c in PRUNERS.items() if "eps" in inspect.signature(c.__init__).parameters]
        raise InvalidArgumentError(
            f"eps applies to method={' and '.join(map(repr, takers))}; method={method!r} takes ratio= "
            "(the fraction of channels to remove) or target_macs=."
        )
    return cls(**given)(model, example_inputs)
