"""Train/eval modes saved and put back module by module.

``was = model.training; model.eval(); ...; model.train(was)`` sets *every* submodule to the
top-level mode afterwards, so a model with a frozen, eval-mode part (a BatchNorm kept in
eval while the rest trains) loses it. Every place that switches a caller's model to eval
for a while uses :func:`eval_mode` (or :func:`module_modes` / :func:`restore_modes`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["module_modes", "restore_modes", "eval_mode"]


def module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module of ``model`` with its train/eval mode, for :func:`restore_modes`."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Put back the modes :func:`module_modes` recorded, module by module."""
    for module, training in modes:
        module.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; each module's own mode put back after it."""
    modes = module_modes(model)
    model.eval()
    try:
        yield model
    finally:
        restore_modes(modes)
