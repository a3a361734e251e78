"""Reusing a model's activations up to the first layer a cut changes.

A copy of the model with one dependency group cut computes exactly what the uncut model
computes until the first call of a cut layer: every module call that *ends* before that
point sees the same inputs and the same weights. :func:`record_calls` lists the module calls
of one forward (by module name and call index, with their start and end in call order),
:func:`reusable_calls` picks the outermost calls that end before the first call of the given
layers, :func:`run_capturing` runs the uncut model and keeps copies of those calls' outputs,
and :func:`run_replaying` runs a cut copy (same module names) that returns the kept outputs
from those calls instead of computing them. Later sensitivity evaluations then skip the
unchanged prefix of the network (a ResNet's cut in its last stage skips three quarters of
the work).

It assumes an eval-mode forward whose module calls happen in the same order on every run
and whose modules compute from their inputs and their own weights; the caller checks the
replayed output against a full forward before relying on it
(:mod:`robustprune.pruners.sensitivity`). Modules are patched through their instance
``forward`` attribute for the duration of one forward, on copies only.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Call", "CallKey", "record_calls", "reusable_calls", "run_capturing", "run_replaying"]

#: ``(module name, call index)``: the n-th call of a module during one forward
CallKey = tuple[str, int]
_MISSING = object()


@dataclass(frozen=True)
class Call:
    """One module call of a forward: ``start``/``end`` are positions in a counter that ticks
    when any module call begins or ends, so a call nested in another lies strictly inside it."""

    name: str
    index: int
    start: int
    end: int


def record_calls(model: nn.Module, x: torch.Tensor) -> list[Call]:
    """Every module call of ``model(x)`` (no grad), in the order the calls begin."""
    tick = itertools.count()
    calls: list[Call] = []

    def wrap(name: str, forward: Callable[..., Any], counter: dict[str, int]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            index, start = counter[name], next(tick)
            counter[name] += 1
            out = forward(*args, **kwargs)
            calls.append(Call(name, index, start, next(tick)))
            return out

        return patched

    with torch.no_grad(), _patched(model, [n for n, _ in model.named_modules()], wrap):
        model(x)
    return sorted(calls, key=lambda c: c.start)


def reusable_calls(calls: Sequence[Call], changed: Iterable[str]) -> tuple[CallKey, ...]:
    """The outermost calls that end before the first call of a ``changed`` module (none
    when no changed module is called: nothing is known to be unchanged)."""
    changed = set(changed)
    starts = [c.start for c in calls if c.name in changed]
    if not starts:
        return ()
    cut = min(starts)
    out: list[CallKey] = []
    last_end = -1
    for c in sorted(calls, key=lambda c: c.start):
        if c.end < cut and c.start > last_end:
            out.append((c.name, c.index))
            last_end = c.end
    return tuple(out)


def run_capturing(model: nn.Module, x: torch.Tensor, keys: Iterable[CallKey]) -> tuple[Any, dict[CallKey, Any]]:
    """``model(x)`` (no grad) and copies of the outputs of the calls ``keys``."""
    wanted = set(keys)
    kept: dict[CallKey, Any] = {}

    def wrap(name: str, forward: Callable[..., Any], counter: dict[str, int]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            key = (name, counter[name])
            counter[name] += 1
            out = forward(*args, **kwargs)
            if key in wanted:
                kept[key] = _copy(out)
            return out

        return patched

    with torch.no_grad(), _patched(model, {n for n, _ in wanted}, wrap):
        out = model(x)
    return out, kept


def run_replaying(model: nn.Module, x: torch.Tensor, kept: Mapping[CallKey, Any]) -> Any:
    """``model(x)`` (no grad) with the calls in ``kept`` returning (copies of) the kept
    outputs instead of running."""

    def wrap(name: str, forward: Callable[..., Any], counter: dict[str, int]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            key = (name, counter[name])
            counter[name] += 1
            out = kept.get(key, _MISSING)
            return forward(*args, **kwargs) if out is _MISSING else _copy(out)

        return patched

    with torch.no_grad(), _patched(model, {n for n, _ in kept}, wrap):
        return model(x)


@contextlib.contextmanager
def _patched(model: nn.Module, names: Iterable[str], wrap: Callable[..., Callable[..., Any]]) -> Iterator[None]:
    """Replace the instance ``forward`` of the named modules by ``wrap(name, forward,
    counter)`` (one call counter per forward) and restore them afterwards."""
    counter: dict[str, int] = defaultdict(int)
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for name in names:
            module = model.get_submodule(name)
            saved.append((module, module.__dict__.get("forward", _MISSING)))
            module.forward = wrap(name, module.forward, counter)
        yield
    finally:
        for module, own in reversed(saved):
            if own is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own


def _copy(out: Any) -> Any:
    """A copy of a module output's tensors (later in-place ops must not reach the kept ones)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(_copy(o) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_copy(o) for o in out)
    if isinstance(out, dict):
        return type(out)((k, _copy(v)) for k, v in out.items())
    return out
