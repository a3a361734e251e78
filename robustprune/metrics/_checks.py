"""Argument checks shared by the metrics and by :func:`robustprune.analysis.analyze`: the
norm names, ``q``, ``eps``, perturbation budgets and counts, each with the message users see.

Numbers are real numbers (Python or NumPy ints and floats, or one-element tensors); ``bool``
and strings are refused rather than converted, so that ``eps="a"`` or ``delta=True`` is an
:class:`~robustprune.errors.InvalidArgumentError` that names the argument.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any, Literal

import torch

from robustprune.errors import InvalidArgumentError

__all__ = [
    "Norm",
    "check_norm",
    "check_q",
    "check_eps",
    "check_budget",
    "check_real",
    "check_count",
    "check_nonnegative",
    "check_tol",
    "check_shape",
    "check_reals",
    "as_real_tensor",
    "refused_if_it_does_not_fit",
]

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
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range (10**400): infinite for the range checks
        return math.inf if value > 0 else -math.inf


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
    """``"2"`` or ``"inf"`` for a spelling of the l2 or l-infinity norm (``2``, ``"2"``,
    ``"l2"``, ``"L2"``, ``"inf"``, ``"Linf"``, ``"∞"``, ``math.inf``); anything else raises."""
    if isinstance(p, bool):
        key = ""
    elif isinstance(p, numbers.Real):
        key = "2" if p == 2 else "inf" if p == math.inf else ""
    else:
        key = str(p).strip().lower()
        key = key[1:] if key.startswith("l") else key
    if key in ("2", "2.0"):
        return "2"
    if key in ("inf", "∞"):
        return "inf"
    raise InvalidArgumentError(f"p must be '2' or 'inf' (the l2 or l-infinity norm), got {p!r}.", argument="p")


def check_nonnegative(value: Any, what: str) -> float:
    """A finite real number >= 0 (a norm, a Lipschitz constant, a weight)."""
    number = check_real(value, what)
    if not math.isfinite(number) or number < 0:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise InvalidArgumentError(f"{what} must be a finite number >= 0, got {shown}.", argument=what)
    return number


def check_tol(tol: Any, what: str = "tol") -> float:
    """A relative tolerance of an iteration: a number in (0, 1) (a tolerance of 1 or more
    would stop a power iteration after its first step, far from the norm)."""
    value = check_real(tol, what)
    if not 0 < value < 1:
        raise InvalidArgumentError(
            f"{what} must be a relative tolerance in (0, 1), e.g. 1e-4, got {tol!r}.", argument=what
        )
    return value


def check_shape(shape: Any, what: str = "input_shape") -> tuple[int, ...]:
    """The shape of one example: a non-empty sequence of whole numbers >= 1 (no batch
    dimension), e.g. ``(3, 32, 32)``."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or not shape:
        raise InvalidArgumentError(
            f"{what} must be the shape of one example (no batch dimension), e.g. (3, 32, 32), got {shape!r}.",
            argument=what,
        )
    return tuple(check_count(d, f"{what} (each size)") for d in shape)


def check_reals(values: Any, what: str, *, allow_empty: bool = False) -> list[float]:
    """A sequence (list, tuple, 1-D tensor) of real numbers as floats; not a string."""
    if isinstance(values, torch.Tensor):
        values = values.detach().flatten().tolist() if values.ndim <= 1 else None
    if values is None or isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise InvalidArgumentError(f"{what} must be a list of numbers, got {type(values).__name__}.", argument=what)
    if not values and not allow_empty:
        raise InvalidArgumentError(f"{what} must not be empty.", argument=what)
    return [check_real(v, what) for v in values]


def as_real_tensor(value: Any, what: str) -> torch.Tensor:
    """``value`` as a real (not complex, not bool) tensor; a list of numbers is converted."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError(
                f"{what} must be a tensor (or a list of numbers), got {type(value).__name__}.", argument=what
            ) from None
    if value.is_complex() or value.dtype == torch.bool:
        raise InvalidArgumentError(f"{what} must be real numbers, got a {value.dtype} tensor.", argument=what)
    if value.is_meta:
        raise InvalidArgumentError(f"{what} is on the meta device (no values).", argument=what)
    return value


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


@contextlib.contextmanager
def refused_if_it_does_not_fit(what: str, fix: str, argument: str) -> Iterator[None]:
    """Run a forward on the caller's inputs: a ``RuntimeError``/``ValueError`` raised in the
    block (a shape or dtype the model does not take) becomes an InvalidArgumentError
    ``"<what> (<error>: <its first line>); <fix>"`` naming ``argument``."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InvalidArgumentError(f"{what} ({type(exc).__name__}: {first}); {fix}", argument=argument) from exc
