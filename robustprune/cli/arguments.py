"""The argparse types of the command line's numeric options: each parses its text and
checks its range with the recipe's own checks (:func:`robustprune.recipe.checks.check_int`,
:func:`~robustprune.recipe.checks.check_number`), so that a bad value is a usage error
(exit 2, "argument --eps: ...") before any work is done."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from robustprune.errors import InvalidArgumentError
from robustprune.recipe.checks import check_int, check_number

__all__ = ["integer", "number", "budget", "input_shape"]


def integer(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        _check(lambda: check_int("the value", value, low))
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A finite number within the bounds (``low_open``: ``> low``)."""

    def parse(text: str) -> float:
        value = _float(text)
        _check(lambda: check_number("the value", value, low, high, low_open=low_open, high_open=high_open))
        return value

    parse.__name__ = "number"
    return parse


def budget(high: float | None = None) -> Callable[[str], float]:
    """An attack budget: ``0.1`` or a fraction such as ``8/255``, finite, > 0 (and <= ``high``)."""

    def parse(text: str) -> float:
        if "/" in text:
            num, den = text.split("/", 1)
            try:
                value = _float(num) / _float(den)
            except ZeroDivisionError:
                raise argparse.ArgumentTypeError(f"'{text}' divides by zero") from None
        else:
            value = _float(text)
        _check(lambda: check_number("the value", value, 0.0, high, low_open=True))
        return value

    parse.__name__ = "budget"
    return parse


def input_shape(text: str) -> tuple[int, int, int]:
    """``C,H,W`` (or ``CxHxW``): three positive integers, e.g. ``3,224,224``."""
    parts = [p.strip() for p in text.replace("x", ",").strip("()[] ").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not C,H,W (three positive integers, e.g. 3,224,224)")
    return values  # type: ignore[return-value]


input_shape.__name__ = "input_shape"


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number or a fraction such as 8/255") from None


def _check(check: Callable[[], None]) -> None:
    try:
        check()
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
