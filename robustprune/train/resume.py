"""Checkpoints of :func:`robustprune.train.fit` that resume bit-for-bit: the model, the
optimizer, the scheduler, the regularizers' state and every RNG state of every rank, written
atomically by rank 0 after each epoch (``last.pt`` in ``checkpoint_dir``), together with a
fingerprint of the arguments so that a checkpoint is only resumed by the same call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune import distributed
from robustprune._io import atomic_torch_save, atomic_write
from robustprune.errors import InvalidArgumentError
from robustprune.train.results import EpochStats
from robustprune.train.rng import rng_state, set_rng_state

__all__ = [
    "CHECKPOINT_NAME",
    "Regularizer",
    "TrainingState",
    "save_checkpoint",
    "load_checkpoint",
    "keep_copy",
    "restore",
    "restore_last_good",
]

#: file name of the rolling checkpoint inside ``checkpoint_dir``
CHECKPOINT_NAME = "last.pt"
_FORMAT = 1

Regularizer = Callable[[nn.Module], torch.Tensor]


@dataclass
class TrainingState:
    """What a training step changes and a checkpoint therefore holds: the (unwrapped) model,
    its optimizer and scheduler, the regularizers (modules keep state, e.g. power-iteration
    vectors), the train loader (its shuffle generators) and the attacks' generator."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    regularizers: tuple[Regularizer, ...]
    loader: Iterable[Any]
    attack_gen: torch.Generator


def save_checkpoint(
    path: Path, epoch: int, state: TrainingState, history: list[EpochStats],
    fingerprint: dict[str, Any], ctx: distributed.DistContext,
) -> None:
    """Write the checkpoint after ``epoch`` epochs (collective: every rank sends its RNG
    states, rank 0 writes)."""
    rng = rng_state(_device_of(state.net), state.loader, state.attack_gen)
    gathered = distributed.all_gather_objects(_to_cpu(rng), ctx)
    if not ctx.is_main:
        return
    payload = {
        "format": _FORMAT,
        "epoch": epoch,
        "model": state.net.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
        "regularizers": [r.state_dict() if isinstance(r, nn.Module) else None for r in state.regularizers],
        "rng": gathered,
        "history": [h.to_dict() for h in history],
        "fingerprint": fingerprint,
        "pruning_history": [dict(step) for step in getattr(state.net, "robustprune_history", []) or []],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)


def load_checkpoint(
    path: Path, fingerprint: dict[str, Any], device: torch.device, *, prune_epochs: Sequence[int] = ()
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none), refused when it was written by a
    call with another ``fingerprint``. A checkpoint written without pruning after ``e``
    epochs also fits a call whose pruning steps all come at or after epoch ``e``
    (``prune_epochs``): the state after ``e`` epochs does not depend on them."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise InvalidArgumentError(
            f"Could not read the checkpoint {path} ({exc}); delete it to start over."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise InvalidArgumentError(f"{path} is not a robustprune training checkpoint; delete it.")
    saved = dict(state["fingerprint"])
    if "pruning" not in saved and "pruning" in fingerprint and all(e >= int(state["epoch"]) for e in prune_epochs):
        saved["pruning"] = fingerprint["pruning"]
    diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
        raise InvalidArgumentError(
            f"The checkpoint in {path.parent} was written by a fit() with different arguments "
            f"({details}). Resume with the same arguments, or use another checkpoint_dir."
        )
    return state


def keep_copy(path: Path, epoch: int) -> Path:
    """Copy the checkpoint ``path`` to ``epoch<epoch>.pt`` next to it (atomically)."""
    target = path.with_name(f"epoch{epoch}.pt")
    atomic_write(target, path.read_bytes())
    return target


def restore(
    saved: Mapping[str, Any], state: TrainingState, ctx: distributed.DistContext
) -> list[EpochStats]:
    """Load a checkpoint into ``state`` (this rank's RNG states included); returns the
    history of the epochs it covers."""
    try:
        state.net.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise InvalidArgumentError(
            "The checkpoint's weights do not fit this model (was it pruned differently?): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scheduler is not None and saved["scheduler"] is not None:
        state.scheduler.load_state_dict(saved["scheduler"])
    for r, r_state in zip(state.regularizers, saved["regularizers"]):
        if isinstance(r, nn.Module) and r_state is not None:
            r.load_state_dict(r_state)
    set_rng_state(saved["rng"][ctx.rank], _device_of(state.net), state.loader, state.attack_gen)
    return [EpochStats(**h) for h in saved["history"]]


def restore_last_good(path: Path | None, net: nn.Module, device: torch.device) -> int | None:
    """Load the weights of the checkpoint at ``path`` into ``net`` and return its epoch
    (None, and ``net`` untouched, when there is no checkpoint)."""
    if path is None or not path.exists():
        return None
    saved = torch.load(path, map_location=device, weights_only=True)
    net.load_state_dict(saved["model"])
    return int(saved["epoch"])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")
