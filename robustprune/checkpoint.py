"""Save and load pruned models without pickled modules.

A checkpoint holds plain data only: the registered architecture name and keyword
arguments, the input shape, the pruning history recorded by the pruners
(``model.robustprune_history``: torch-pruning's pruning history and spectral ranks), the
state dict, user metadata and library versions. :func:`load_pruned` reads it with
``torch.load(weights_only=True)``, rebuilds the architecture with
:func:`robustprune.models.create_model`, replays the history and loads the weights, so the
loaded model reproduces the saved one's outputs bit for bit. Writes are atomic
(:func:`robustprune._io.atomic_torch_save`: a temporary file in the same directory is
fsynced, then renamed over the destination).
"""

from __future__ import annotations

import importlib.metadata
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune._io import atomic_torch_save
from robustprune.errors import InvalidArgumentError, RobustPruneError
from robustprune.models import create_model, model_spec

__all__ = ["save_pruned", "load_pruned", "CheckpointError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "robustprune.pruned"
FORMAT_VERSION = 1


class CheckpointError(RobustPruneError, ValueError):
    """A checkpoint file is missing, not a robustprune checkpoint, or does not match its
    architecture."""


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    Args:
        model: a (pruned) model.
        arch: registry name for :func:`robustprune.models.create_model` (``"resnet18-cifar"``,
            ``"timm:convnext_atto"``, ...); defaults to the one recorded by ``create_model``.
        arch_kwargs: keyword arguments for ``create_model`` (``num_classes``, ``width``, ...);
            default: the recorded ones when ``arch`` is the recorded architecture.
        history: pruning steps to replay; default ``model.robustprune_history``.
        meta: extra plain data (numbers, strings, lists, dicts, tensors), returned by
            :func:`load_pruned` as ``model.robustprune_meta``.
    """
    spec = model_spec(model)
    if arch is None:
        if spec is None:
            raise InvalidArgumentError(
                f"save_pruned cannot tell how to rebuild this {type(model).__name__}: it was not "
                "created by robustprune.models.create_model. Pass arch='<registry name>' and "
                "arch_kwargs={...}."
            )
        arch = spec.name
    if not isinstance(arch, str):
        raise InvalidArgumentError(f"arch must be a model registry name (str), got {type(arch).__name__}.")
    input_shape = None
    if spec is not None and spec.name == arch:
        input_shape = list(spec.input_shape) if spec.input_shape else None
        if arch_kwargs is None:
            arch_kwargs = spec.kwargs
    arch_kwargs = dict(arch_kwargs or {})
    if "input_shape" in arch_kwargs:
        input_shape = list(arch_kwargs.pop("input_shape"))
    if history is None:
        history = getattr(model, "robustprune_history", None) or []
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": _plain(arch_kwargs, "arch_kwargs"),
        "input_shape": input_shape,
        "history": _plain(list(history), "history"),
        "state_dict": {k: v.detach() for k, v in model.state_dict().items()},
        "training": bool(model.training),
        "meta": _plain(dict(meta or {}), "meta"),
        "versions": _versions(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(payload, path)


def load_pruned(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (``torch.load(weights_only=True)``).

    The returned model carries ``robustprune_meta`` (the saved ``meta`` dict),
    ``robustprune_history`` (so it can be pruned further and saved again) and the saved
    train/eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at '{path}'.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"'{path}' is not a loadable robustprune checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})."
        ) from exc
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a robustprune pruned-model checkpoint (written by save_pruned).")
    if int(payload.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' uses checkpoint format {payload['version']}; this robustprune reads up to "
            f"{FORMAT_VERSION}. Upgrade robustprune."
        )
    from robustprune.pruners.history import replay_history

    kwargs = dict(payload.get("arch_kwargs") or {})
    shape = payload.get("input_shape")
    try:
        model = create_model(payload["arch"], input_shape=tuple(shape) if shape else None, **kwargs)
        model = model.to(map_location) if map_location is not None else model
        replay_history(model, payload.get("history") or [])
    except RobustPruneError as exc:
        raise CheckpointError(f"Cannot rebuild the model saved in '{path}': {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"The weights in '{path}' do not fit the rebuilt '{payload['arch']}' ({str(exc).splitlines()[0]}); "
            "the checkpoint's architecture arguments or pruning history are inconsistent."
        ) from exc
    model.train(bool(payload.get("training", False)))
    model.robustprune_meta = dict(payload.get("meta") or {})
    return model


# --------------------------------------------------------------------------- helpers


def _plain(value: Any, where: str) -> Any:
    """A copy made only of what ``torch.load(weights_only=True)`` accepts."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise InvalidArgumentError(f"{where} has a key of type {type(k).__name__}; use str keys.")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, tuple):
        return tuple(_plain(v, where) for v in value)
    if isinstance(value, list):
        return [_plain(v, where) for v in value]
    raise InvalidArgumentError(
        f"{where} holds a {type(value).__name__}, which cannot be saved without pickling code; "
        "use numbers, strings, lists, dicts or tensors."
    )


def _versions() -> dict[str, str]:
    out = {"torch": str(torch.__version__)}
    for dist in ("robustprune", "torch-pruning", "timm", "torchvision"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
