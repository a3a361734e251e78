"""Argument checks shared by the pruners: ε settings (a float or ``{module-name-glob: ε}``)
and their matching, MACs fractions, ignored layers, integers, and the one-line excerpt of
an exception that error messages quote."""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.layers import classifier_head

__all__ = [
    "check_ignored",
    "ignored_names",
    "check_fraction",
    "check_eps_value",
    "eps_setting",
    "match_eps",
    "check_globs_match",
    "is_int",
    "first_line",
]


def check_ignored(ignored: Any) -> tuple[nn.Module | str, ...]:
    """``ignored_layers`` as a tuple of modules or module names (a type is an error:
    torch-pruning would silently ignore it)."""
    if ignored is None:
        return ()
    if isinstance(ignored, (nn.Module, str, type)):
        ignored = [ignored]
    if not isinstance(ignored, Iterable):
        raise InvalidArgumentError(
            f"ignored_layers must be a list of modules (or module names), got {type(ignored).__name__}."
        )
    items = list(ignored)
    for item in items:
        if isinstance(item, type):
            raise InvalidArgumentError(
                f"ignored_layers got the type {item.__name__}, not a module: torch-pruning would "
                "silently ignore it. Pass module instances, e.g. ignored_layers=[model.fc], or "
                f"[m for m in model.modules() if isinstance(m, {item.__name__})]."
            )
        if not isinstance(item, (nn.Module, str)):
            raise InvalidArgumentError(
                f"ignored_layers entries must be modules of the model or their names, got "
                f"{type(item).__name__}."
            )
    return tuple(items)


def ignored_names(model: nn.Module, ignored: Sequence[nn.Module | str]) -> list[str]:
    """Names of the ignored modules of ``model``, validated, with the classifier head."""
    names_by_id = {id(m): n for n, m in model.named_modules()}
    out: list[str] = []
    for item in ignored:
        if isinstance(item, str):
            try:
                model.get_submodule(item)
            except AttributeError as exc:
                raise InvalidArgumentError(
                    f"ignored_layers names '{item}', but the model has no such module."
                ) from exc
            out.append(item)
        elif id(item) in names_by_id:
            out.append(names_by_id[id(item)])
        else:
            raise InvalidArgumentError(
                f"ignored_layers contains a {type(item).__name__} that is not a submodule of "
                "this model; pass modules of the model being pruned (e.g. [model.fc]) or their "
                "names."
            )
    head = classifier_head(model)
    if head is not None and id(head) in names_by_id:
        out.append(names_by_id[id(head)])
    return list(dict.fromkeys(out))


def check_fraction(value: Any, name: str) -> float:
    """A fraction of the original MACs, in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
        raise InvalidArgumentError(
            f"{name} is the fraction of the original MACs to keep and must be in (0, 1], got {value!r}.",
            argument=name,
        )
    return float(value)


def check_eps_value(value: Any, where: str = "eps") -> float:
    """One ε, in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
        raise InvalidArgumentError(
            f"{where} must be in (0, 1) (the relative residual to allow), got {value!r}.",
            argument="eps",
        )
    return float(value)


def eps_setting(eps: Any) -> float | dict[str, float] | None:
    """Validated ``eps``: None, a float in (0, 1), or ``{module-name-glob: ε}``."""
    if eps is None:
        return None
    if isinstance(eps, Mapping):
        if not eps:
            raise InvalidArgumentError("eps={} is empty; give a float or {'name-glob': eps}.")
        out: dict[str, float] = {}
        for pattern, value in eps.items():
            if not isinstance(pattern, str):
                raise InvalidArgumentError(f"eps dict keys must be module-name globs (str), got {pattern!r}.")
            out[pattern] = check_eps_value(value, f"eps['{pattern}']")
        return out
    return check_eps_value(eps)


def match_eps(eps: float | Mapping[str, float], layers: Sequence[str]) -> float | None:
    """ε for a group: the float, or the smallest ε among the globs matching any of its
    layers (None when no glob matches)."""
    if not isinstance(eps, Mapping):
        return float(eps)
    hits = [v for pat, v in eps.items() if any(fnmatch.fnmatchcase(n, pat) for n in layers)]
    return min(hits) if hits else None


def check_globs_match(eps: Any, names: Sequence[Sequence[str]]) -> None:
    """Every glob of a dict ``eps`` matches at least one of the layer names."""
    if not isinstance(eps, Mapping):
        return
    flat = [n for layers in names for n in layers]
    for pattern in eps:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in flat):
            shown = ", ".join(flat[:8]) + (", ..." if len(flat) > 8 else "")
            raise InvalidArgumentError(
                f"eps pattern '{pattern}' matches no prunable layer. Prunable layers: {shown}."
            )


def is_int(v: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
