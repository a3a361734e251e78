"""The argument checks of :func:`robustprune.checkpoint.save_pruned` and
:func:`~robustprune.checkpoint.load_pruned`, made before anything is written or read: the
model and the plain-data arguments, the architecture name, that the checkpoint the
arguments describe can be rebuilt, and ``map_location``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustprune._inputs import check_materialized
from robustprune.errors import InvalidArgumentError, UnknownNameError
from robustprune.models import create_model, list_models
from robustprune.pruners._checks import first_line
from robustprune.pruners.history import replay_history

__all__ = ["check_save_arguments", "check_rebuilds", "check_map_location", "check_arch", "state_mismatch"]


def check_save_arguments(model: Any, arch_kwargs: Any, history: Any, meta: Any) -> None:
    check_materialized(model, "save_pruned")
    for name, value in (("arch_kwargs", arch_kwargs), ("meta", meta)):
        if value is not None and not isinstance(value, Mapping):
            raise InvalidArgumentError(f"{name} must be a dict, got {type(value).__name__}.", argument=name)
    if history is not None and (isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence)):
        raise InvalidArgumentError(
            f"history must be a list of pruning steps (model.robustprune_history), got {type(history).__name__}.",
            argument="history")


def check_rebuilds(arch: str, arch_kwargs: dict[str, Any], input_shape: list[int] | None,
                    history: list[Any], state: Mapping[str, torch.Tensor]) -> None:
    """The checkpoint these arguments make can be loaded: the architecture builds, the
    history replays on it and the weights fit (on the CPU, before anything is written)."""
    where = f"save_pruned(arch={arch!r}, arch_kwargs={arch_kwargs!r})"
    try:
        model = create_model(arch, input_shape=tuple(input_shape) if input_shape else None, **arch_kwargs)
    except Exception as exc:  # noqa: BLE001 (reported with the arguments that caused it)
        raise InvalidArgumentError(
            f"{where}: the architecture cannot be built from these arguments ({type(exc).__name__}: "
            f"{first_line(exc)}), so the checkpoint could never be loaded.", argument="arch_kwargs") from None
    try:
        replay_history(model, history)
    except Exception as exc:  # noqa: BLE001
        raise InvalidArgumentError(
            f"{where}: the pruning history does not replay on this architecture ({first_line(exc)}), so the "
            "checkpoint could never be loaded.", argument="history") from None
    detail = state_mismatch(model, state)
    if detail:
        raise InvalidArgumentError(
            f"{where}: the model's weights do not fit the architecture these arguments build (state_dict: "
            f"{detail}); pass the arguments the model was built with.", argument="arch_kwargs")


def check_map_location(map_location: Any) -> str | torch.device | None:
    if map_location is None:
        return None
    if not isinstance(map_location, (str, torch.device)):
        raise InvalidArgumentError(
            f"map_location must be a device ('cpu', 'cuda', 'cuda:1') or None, got {type(map_location).__name__}.",
            argument="map_location")
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(
            f"map_location={map_location!r} is not a device; use 'cpu', 'cuda', 'cuda:<index>' or None.",
            argument="map_location") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"map_location={map_location!r}: CUDA is not available here; load with map_location='cpu'.",
            argument="map_location")
    return map_location


def check_arch(arch: Any) -> None:
    """``arch`` names an architecture :func:`create_model` can build (checked at save time,
    so that no unloadable checkpoint is ever written)."""
    if not isinstance(arch, str) or not arch:
        raise InvalidArgumentError(f"arch must be a model registry name (str), got {arch!r}.", argument="arch")
    if arch in list_models() or _passthrough_exists(arch):
        return
    raise UnknownNameError(
        f"save_pruned(arch={arch!r}): no such architecture, so the checkpoint could never be loaded. "
        "Register it first (@robustprune.models.register_model on a function (num_classes, input_shape, "
        "**kw) -> nn.Module), or use 'timm:<name>' / 'torchvision:<name>'; registered: "
        f"{', '.join(list_models())}."
    )


def _passthrough_exists(arch: str) -> bool:
    prefix, _, name = arch.partition(":")
    try:
        if prefix == "timm":
            import timm

            return bool(name) and timm.is_model(name)
        if prefix == "torchvision":
            import torchvision

            return name in torchvision.models.list_models()
    except ImportError:
        return False
    return False


def state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """How ``state`` does not fit ``model`` (the first missing, unexpected or misshapen
    tensor), or None when it fits."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    return (
        f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
        else f"'{wrong[0]}' is {tuple(state[wrong[0]].shape)}, the model's is {tuple(own[wrong[0]].shape)}"
    )
