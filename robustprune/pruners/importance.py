"""The importance contract: how a channel score becomes the group's vector ``theta``.

An importance is called on one torch-pruning dependency group (the coupled layers of one
channel set) and returns one non-negative score per channel, or None to leave the group
alone. Attention heads and grouped convolutions return one score per channel of every
channel group; the pruner averages them per unit. ``theta`` is then, per unit:

- for an :class:`Importance`, ``theta = score ** (1 / power)`` with its declared ``power``
  (:class:`GroupL2Importance`, the default, declares ``power = 2``: torch-pruning's
  ``GroupMagnitudeImportance(p=2, normalizer=None)`` returns *squared* group norms, so
  ``theta_i = sqrt(mean_l ||w_{l,i}||_2^2)`` over the coupled layers ``l`` and
  ``eps_2(theta, k)`` is exactly the relative Frobenius norm of the group's parameters
  that pruning removes);
- for any other callable ``group -> scores`` (e.g. torch-pruning's
  ``tp.importance.GroupTaylorImportance()``, after a backward pass so that gradients
  exist), the scores themselves: ε is then the relative residual of those scores.

Wrap a callable to declare its power: ``Importance(tp.importance.GroupMagnitudeImportance(
p=2, normalizer=None), power=2)`` means the same as the default.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from typing import Any

import torch

from robustprune.errors import InvalidArgumentError, PruningError
from robustprune.pruners._tp import group_magnitude

__all__ = ["Importance", "GroupL2Importance", "ImportanceLike", "check_importance", "power_of", "group_theta"]

logger = logging.getLogger(__name__)

#: what ``importance=`` accepts: an :class:`Importance` or a plain ``group -> scores`` callable
ImportanceLike = Callable[[Any], "torch.Tensor | None"]


class Importance:
    """A ``group -> per-channel scores`` callable with a declared ``power``:
    ``theta = score ** (1 / power)`` (``power = 1``: the scores are theta).

    Subclasses may override ``__call__`` and set ``power`` as a class attribute instead of
    wrapping a function."""

    power: float = 1.0

    def __init__(self, fn: ImportanceLike, *, power: float = 1.0) -> None:
        if not callable(fn):
            raise InvalidArgumentError(
                f"Importance wraps a callable group -> per-channel scores, got {type(fn).__name__}."
            )
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or not float(power) > 0:
            raise InvalidArgumentError(f"Importance power must be a positive number, got {power!r}.")
        self.fn = fn
        self.power = float(power)

    def __call__(self, group: Any) -> torch.Tensor | None:
        return self.fn(group)

    def __repr__(self) -> str:
        return f"Importance({self.fn!r}, power={self.power:g})"


class GroupL2Importance(Importance):
    """Default importance: ``theta_i = sqrt(mean over coupled layers of ||w_{l,i}||_2^2)``.

    Scores are torch-pruning's ``GroupMagnitudeImportance(p=2, normalizer=None)``, squared
    group norms, hence ``power = 2``."""

    def __init__(self) -> None:
        super().__init__(group_magnitude(), power=2)

    def __repr__(self) -> str:
        return "GroupL2Importance()"


def check_importance(importance: Any) -> ImportanceLike:
    """``importance`` validated (a callable), :class:`GroupL2Importance` when None."""
    if importance is None:
        return GroupL2Importance()
    if not callable(importance):
        raise InvalidArgumentError(
            "importance must be a callable group -> per-channel scores (e.g. "
            f"tp.importance.GroupTaylorImportance()), got {type(importance).__name__}."
        )
    return importance


def power_of(importance: ImportanceLike) -> float:
    """The declared power of an :class:`Importance`; 1 for a plain callable."""
    return float(importance.power) if isinstance(importance, Importance) else 1.0


def group_theta(scores: Any, channel_groups: int, power: float, name: str) -> torch.Tensor | None:
    """``theta`` (float64, one entry per unit) from an importance's per-channel ``scores``:
    averaged over the ``channel_groups``, then ``** (1 / power)``. None (skip the group) when
    the scores do not split into the channel groups; raises for negative or non-finite
    scores."""
    imp = torch.as_tensor(scores).detach().to("cpu", torch.float64).flatten()
    if imp.numel() % channel_groups:
        logger.debug("skipping group %s: %d scores for %d channel groups", name, imp.numel(), channel_groups)
        return None
    theta = imp.view(channel_groups, -1).mean(0)
    if not torch.isfinite(theta).all() or (theta < 0).any():
        raise PruningError(
            f"The importance of group '{name}' has negative or non-finite entries "
            "(NaN/inf weights?); check the weights or pass a non-negative importance."
        )
    if power == 1:
        return theta
    return theta.sqrt() if power == 2 else theta ** (1.0 / power)
