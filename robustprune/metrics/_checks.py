"""Argument checks shared by the metrics and by :func:`robustprune.analysis.analyze`: the
norm names, ``q``, ``eps``, perturbation budgets and counts, each with the message users see.

Numbers are real numbers (Python or NumPy ints and floats, or one-element tensors); ``bool``
and strings are refused rather than converted, so that ``eps="a"`` or ``delta=True`` is an
:class:`~robustprune.errors.InvalidArgumentError` that names the argument.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import torch

from robustprune.errors import InvalidArgumentError

__all__ = ["Norm", "check_norm", "check_q", "check_eps", "check_budget", "check_real", "check_count"]

Norm = Literal["2", "inf"]


def check_real(value: Any, what: str) -> float:
    """``value`` as a float when it is a real number (not a bool, not a string); NaN and
    infinities are returned as they are (the caller checks the range)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"{what} must be a number, got {value!r} ({type(value).__name__}).", argument=what
        )
    return float(value)


def check_count(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` as an int when it is a whole number ``>= minimum`` (not a bool or a float)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(
            f"{what} must be a whole number >= {minimum}, got {value!r} ({type(value).__name__}).",
            argument=what,
        )
    if int(value) < minimum:
        raise InvalidArgumentError(f"{what} must be >= {minimum}, got {value}.", argument=what)
    return int(value)


def check_norm(p: str | float) -> str:
    """``"2"`` or ``"inf"`` for any spelling of the l2 or l-infinity norm (``2``, ``"l2"``,
    ``"Linf"``, ``"∞"``, ``math.inf``); anything else raises."""
    key = str(p).lower().replace("l", "")
    if key in ("2", "2.0"):
        return "2"
    if key in ("inf", "∞"):
        return "inf"
    raise InvalidArgumentError(f"p must be '2' or 'inf' (the l2 or l-infinity norm), got {p!r}.")


def check_q(q: float) -> float:
    """``q`` of an l_q norm: ``q >= 1`` or infinite."""
    value = check_real(q, "q")
    if not (value >= 1 or value == math.inf):
        raise InvalidArgumentError(f"q must be >= 1 (a norm), got {q}.", argument="q")
    return value


def check_eps(eps: float) -> float:
    """A relative residual target in (0, 1)."""
    value = check_real(eps, "eps")
    if not 0 < value < 1:
        raise InvalidArgumentError(f"eps must be in (0, 1), got {eps}.", argument="eps")
    return value


def check_budget(delta: float, what: str = "delta") -> float:
    """A perturbation budget: finite and >= 0."""
    value = check_real(delta, what)
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{what} must be a finite budget >= 0, got {delta}.", argument=what)
    return value
