"""The checks of :func:`robustprune.analysis.analyze`'s arguments, all made before anything
runs: one helper per kind of input (the scalar settings, the model, the labels), each
raising a :class:`~robustprune.errors.RobustPruneError` that says what was wrong and what to
do. The data batch and the example inputs are checked where they are collected
(:mod:`robustprune.analysis._data`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustprune.analysis.report import p_label
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers import prunable_layers
from robustprune.metrics import check_budget, check_count, check_eps, check_norm

__all__ = [
    "DEFAULT_DELTA",
    "Settings",
    "check_settings",
    "check_norms",
    "check_delta",
    "check_model",
    "check_labels",
]

#: budgets used for gap bounds, certified fraction and audit when ``delta`` is not given
#: (DESIGN's CIFAR budgets; pass ``delta=`` for other datasets)
DEFAULT_DELTA: dict[str, float] = {"inf": 8 / 255, "2": 0.5}

_CONV_NORMS = ("matricized", "operator")


@dataclass(frozen=True)
class Settings:
    """The checked arguments of one :func:`analyze` call."""

    eps: float
    norms: tuple[str, ...]
    conv_norm: str
    deltas: dict[str, float]
    max_samples: int
    alignment_samples: int | None
    progress: bool


def check_settings(
    eps: Any,
    norms: Any,
    conv_norm: Any,
    delta: Any,
    max_samples: Any,
    alignment_samples: Any,
    progress: Any,
) -> Settings:
    """Every scalar argument of :func:`analyze`, checked (types, ranges, finiteness)."""
    eps = check_eps(eps)
    norms_t = check_norms(norms)
    if not isinstance(conv_norm, str) or conv_norm not in _CONV_NORMS:
        raise InvalidArgumentError(
            f"conv_norm must be 'matricized' or 'operator', got {conv_norm!r}.", argument="conv_norm"
        )
    samples = check_count(max_samples, "max_samples")
    align = None if alignment_samples is None else check_count(alignment_samples, "alignment_samples")
    if not isinstance(progress, bool):
        raise InvalidArgumentError(f"progress must be True or False, got {progress!r}.", argument="progress")
    deltas = check_delta(delta, norms_t)
    return Settings(eps, norms_t, conv_norm, deltas, samples, align, progress)


def check_norms(norms: Any) -> tuple[str, ...]:
    """The norms as ``"2"`` / ``"inf"``, deduplicated in order, at least one."""
    if isinstance(norms, str):
        norms = (norms,)
    if not isinstance(norms, Sequence):
        raise InvalidArgumentError(
            f"norms must be a sequence of '2' and 'inf', e.g. norms=('2', 'inf'), got {norms!r}.",
            argument="norms",
        )
    out = tuple(dict.fromkeys(check_norm(p) for p in norms))
    if not out:
        raise InvalidArgumentError("norms must name at least one of '2' and 'inf'.", argument="norms")
    return out


def check_delta(delta: Any, norms: tuple[str, ...]) -> dict[str, float]:
    """One budget per norm: :data:`DEFAULT_DELTA`, the same number for each, or a mapping
    ``{norm: budget}``; each finite and >= 0, and an l-infinity budget at most 1 (inputs
    live in [0, 1]: a larger one covers the whole input box)."""
    if delta is None:
        values = dict(DEFAULT_DELTA)
    elif isinstance(delta, Mapping):
        values = {check_norm(k): check_budget(v, f"delta[{k!r}]") for k, v in delta.items()}
        missing = [p for p in norms if p not in values]
        if missing:
            raise InvalidArgumentError(
                f"delta has no budget for norm(s) {missing}; give one per norm.", argument="delta"
            )
    else:
        value = check_budget(delta, "delta")
        values = {p: value for p in norms}
    if "inf" in norms and values["inf"] > 1:
        raise InvalidArgumentError(
            f"delta for l{p_label('inf')} is {values['inf']}, more than 1: inputs live in [0, 1], "
            "so the budget covers the whole input box. Give an l-infinity budget in [0, 1], "
            "e.g. delta={'2': 0.5, 'inf': 8/255}.",
            argument="delta",
        )
    return values


def check_model(model: Any) -> nn.Module:
    """A module with a prunable layer and real, finite weights (not on the meta device)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"analyze takes a torch.nn.Module, got {type(model).__name__}.", argument="model"
        )
    if not prunable_layers(model):
        raise ModelNotSupportedError(
            f"{type(model).__name__} has no prunable layer (Linear, Conv2d or LowRankLinear): "
            "there is nothing to analyze."
        )
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    meta = [n for n, t in tensors if t.is_meta]
    if meta:
        raise ModelNotSupportedError(
            f"The model's weights are on the meta device ({meta[0]}, ...): they hold no values "
            "to measure. Materialize them first, e.g. model.to_empty(device='cpu') and "
            "model.load_state_dict(...)."
        )
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidArgumentError(
                f"'{name}' has non-finite entries (NaN or inf); the model diverged or was loaded "
                "incorrectly. Fix the weights before measuring them.",
                argument="model",
            )
    return model


def check_labels(y: torch.Tensor, logits: torch.Tensor) -> None:
    """Labels are class indices ``[0, K)`` of a model whose outputs are ``(N, K)`` logits."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelNotSupportedError(
            f"With labels, analyze needs a classifier whose outputs are logits (N, K >= 2), got "
            f"{shape}; pass data without labels for the per-layer metrics and bounds."
        )
    k = int(logits.shape[1])
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise InvalidArgumentError(
            f"data labels must be class indices in [0, {k - 1}] for a model with {k} outputs, got "
            f"values in [{int(y.min())}, {int(y.max())}].",
            argument="data",
        )
