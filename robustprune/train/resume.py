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
    "check_resumable",
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
    if not isinstance(state.get("fingerprint"), Mapping) or not isinstance(state.get("epoch"), int):
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


#: optimizer state entries that have the shape of their parameter
_PARAM_SHAPED = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def check_resumable(
    saved: Mapping[str, Any], net: nn.Module, optimizer: torch.optim.Optimizer,
    regularizers: Sequence[Regularizer] = (),
) -> None:
    """Refuse a checkpoint whose tensors do not fit ``net`` (every key and shape),
    ``optimizer`` (its parameter groups and the parameter-shaped state) or the
    regularizers' state, before anything is loaded."""
    _check_tensors(saved.get("model"), net.state_dict(), "model", strict=True)
    _check_optimizer(saved.get("optimizer"), optimizer)
    reg_states = saved.get("regularizers") or []
    for r, r_state in zip(regularizers, reg_states):
        if isinstance(r, nn.Module) and r_state is not None:
            _check_tensors(r_state, r.state_dict(), f"regularizer {type(r).__name__}", strict=False)


def restore(
    saved: Mapping[str, Any], state: TrainingState, ctx: distributed.DistContext
) -> list[EpochStats]:
    """Load a checkpoint into ``state`` (this rank's RNG states included); returns the
    history of the epochs it covers. Call :func:`check_resumable` first."""
    state.net.load_state_dict(saved["model"])
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
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        state, epoch = saved["model"], int(saved["epoch"])
    except Exception as exc:  # a corrupt or crafted file: weights_only never runs its code
        raise InvalidArgumentError(
            f"{path} is not a checkpoint written by fit ({type(exc).__name__}: {exc}); remove it "
            "or use another checkpoint_dir.", argument="checkpoint_dir") from exc
    _check_tensors(state, net.state_dict(), "model", strict=True)
    net.load_state_dict(state)
    return epoch


def _misfit(what: str, detail: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"The checkpoint does not fit this {what}: {detail}. Was the model built with other "
        "widths or pruned differently? Nothing was loaded; resume with the model the run started "
        "from, or use another checkpoint_dir.",
        argument="checkpoint_dir",
    )


def _check_tensors(saved: Any, current: Mapping[str, Any], what: str, *, strict: bool) -> None:
    """Every tensor of ``saved`` has the key and shape of ``current`` (and, ``strict``,
    every key of ``current`` is in ``saved``)."""
    if not isinstance(saved, Mapping):
        raise _misfit(what, f"its {what} state is a {type(saved).__name__}, not a state_dict")
    if strict:
        missing = [k for k in current if k not in saved]
        extra = [k for k in saved if k not in current]
        if missing or extra:
            parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
                [f"unexpected {', '.join(extra[:3])}"] if extra else [])
            raise _misfit(what, "; ".join(parts))
    for key, value in saved.items():
        mine = current.get(key)
        if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor) and value.shape != mine.shape:
            raise _misfit(what, f"{key} has shape {tuple(value.shape)} in the checkpoint but "
                                f"{tuple(mine.shape)} here")


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    state = saved.get("state") if isinstance(saved, Mapping) else None
    if not isinstance(groups, list) or not isinstance(state, Mapping):
        raise _misfit("optimizer", "its optimizer state is not an optimizer state_dict")
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    saved_sizes = [len(g.get("params", [])) if isinstance(g, Mapping) else -1 for g in groups]
    if sizes != saved_sizes:
        raise _misfit("optimizer", f"parameter groups of sizes {saved_sizes} in the checkpoint but "
                                   f"{sizes} here (are other parameters trainable?)")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    by_id = dict(zip([i for g in groups for i in g["params"]], params))
    for index, entry in state.items():
        p = by_id.get(index)
        if p is None or not isinstance(entry, Mapping):
            raise _misfit("optimizer", f"state for parameter {index!r}, which the optimizer does not have")
        for key in _PARAM_SHAPED:
            value = entry.get(key)
            if isinstance(value, torch.Tensor) and value.shape != p.shape:
                raise _misfit("optimizer", f"{key} of parameter {index} has shape {tuple(value.shape)} "
                                           f"but the parameter {tuple(p.shape)}")


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
