"""Argument checks shared by the metrics and by :func:`robustprune.analysis.analyze`: the
norm names, ``q``, ``eps`` and perturbation budgets, each with the message users see."""

from __future__ import annotations

import math
from typing import Literal

from robustprune.errors import InvalidArgumentError

__all__ = ["Norm", "check_norm", "check_q", "check_eps", "check_budget"]

Norm = Literal["2", "inf"]


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
    if not (q >= 1 or math.isinf(q)):
        raise InvalidArgumentError(f"q must be >= 1 (a norm), got {q}.")
    return float(q)


def check_eps(eps: float) -> float:
    """A relative residual target in (0, 1)."""
    if not 0 < float(eps) < 1:
        raise InvalidArgumentError(f"eps must be in (0, 1), got {eps}.")
    return float(eps)


def check_budget(delta: float) -> float:
    """A perturbation budget: finite and >= 0."""
    if not math.isfinite(float(delta)) or float(delta) < 0:
        raise InvalidArgumentError(f"delta must be a finite budget >= 0, got {delta}.")
    return float(delta)
