"""The argument checks of the public training attacks (:func:`~robustprune.attacks.pgd`,
:func:`~robustprune.attacks.fgsm_rs`, :func:`~robustprune.attacks.trades_attack`,
:func:`~robustprune.attacks.trades_loss`), made before the first forward pass so that a
refused call never runs the model (in train mode a forward updates BatchNorm statistics).

:func:`robustprune.train.fit` calls the attacks' unchecked bodies: its batches are checked
once by its :class:`~robustprune._inputs.BatchValidator`, not once per step."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from robustprune._inputs import BatchValidator, check_bool, check_int
from robustprune.errors import InvalidArgumentError

__all__ = ["check_attack", "check_beta", "check_step_size", "runs_on"]


def check_step_size(step_size: Any) -> None:
    """``None`` (the default step) or a finite number >= 0."""
    if step_size is not None and (
        isinstance(step_size, bool) or not isinstance(step_size, numbers.Real) or not 0 <= step_size < math.inf
    ):
        raise InvalidArgumentError(f"step_size must be a finite number >= 0 (or None), got {step_size!r}.",
                                   argument="step_size")


def check_beta(beta: Any) -> None:
    """The TRADES weight: a finite number >= 0."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < math.inf:
        raise InvalidArgumentError(f"TRADES beta must be a finite number >= 0, got {beta!r}.", argument="beta")


def check_attack(model: Any, x: Any, y: Any, *, step_size: Any, seed: Any, random_start: Any = True,
                 generator: Any = None, labels: bool = True) -> None:
    """The model, the inputs (floating, finite, in [0, 1], a batch), the labels (integer
    class indices, one per input, below the head's output count when it has one), the step
    size, ``random_start``, ``seed`` and ``generator``."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"The attack needs a torch.nn.Module, got {type(model).__name__}.", argument="model")
    check_step_size(step_size)
    check_bool("random_start", random_start)
    check_int("seed", seed, low=0, high=2**63 - 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.",
                                   argument="generator")
    if not labels:  # trades_attack: the inputs alone, checked with stand-in labels
        n = x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else 0
        y = torch.zeros(n, dtype=torch.long)
    # the checks of every labelled batch (inputs floating, finite, in [0, 1]; labels class indices)
    BatchValidator("the attack's inputs", classes=_head_outputs(model))(x, y)

def _head_outputs(model: nn.Module) -> int | None:
    from robustprune.layers import classifier_head

    head = classifier_head(model)
    return int(head.out_features) if isinstance(head, nn.Linear) else None


@contextlib.contextmanager
def runs_on(x: torch.Tensor) -> Iterator[None]:
    """A model that cannot run on ``x`` (its shape, channels, dtype or device) fails at its
    first layer, before any BatchNorm: that RuntimeError becomes an InvalidArgumentError."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidArgumentError(
            f"The model cannot run on x of shape {tuple(x.shape[1:])} per example ({x.dtype}, {x.device}): {first}",
            argument="x") from exc
