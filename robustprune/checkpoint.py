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

from robustprune._checkpoint_args import (
    check_arch,
    check_map_location,
    check_rebuilds,
    check_save_arguments,
    state_mismatch,
)
from robustprune._io import atomic_torch_save
from robustprune.errors import InvalidArgumentError, RobustPruneError
from robustprune.models import create_model, model_spec
from robustprune.models.passthrough import suggest_passthrough
from robustprune.pruners._checks import first_line, is_int
from robustprune.pruners.history import check_history, replay_history

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

    Each module's train/eval mode and each parameter's ``requires_grad`` are saved too. When
    ``arch``, ``arch_kwargs`` or ``history`` is given (rather than read from the model), the
    checkpoint is rebuilt once before it is written (the architecture built, the history
    replayed, every weight's shape compared), so that no checkpoint that cannot be loaded is
    ever written: a mismatch is an :class:`~robustprune.errors.InvalidArgumentError` naming
    the argument.
    """
    check_save_arguments(model, arch_kwargs, history, meta)
    explicit = arch is not None or arch_kwargs is not None or history is not None
    spec = model_spec(model)
    if arch is None:
        if spec is None:
            hint = suggest_passthrough(model)
            how = (f"arch={hint[0]!r}, arch_kwargs={ {k: v for k, v in hint[1].items() if v is not None} } (a pruned "
                   "model too: its history replays the pruning)" if hint else "arch='<registry name>' and arch_kwargs={...}")
            raise InvalidArgumentError(
                f"save_pruned cannot tell how to rebuild this {type(model).__name__}: it was not "
                f"created by robustprune.models.create_model. Pass {how}, or build it with "
                "create_model (or register_model a builder) next time."
            )
        arch = spec.name
    check_arch(arch)
    input_shape = None
    if spec is not None and spec.name == arch:
        input_shape = list(spec.input_shape) if spec.input_shape else None
        if arch_kwargs is None:
            arch_kwargs = spec.kwargs
    arch_kwargs = dict(arch_kwargs or {})
    if "input_shape" in arch_kwargs:
        shape = arch_kwargs.pop("input_shape")
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or not all(
                is_int(d) and d > 0 for d in shape):
            raise InvalidArgumentError(
                f"arch_kwargs['input_shape'] must be the shape of one example, e.g. [3, 32, 32], got {shape!r}.",
                argument="arch_kwargs")
        input_shape = list(shape)
    if history is None:
        history = getattr(model, "robustprune_history", None) or []
    try:
        check_history(list(history))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"save_pruned: history: {exc}", argument="history") from None
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if explicit:
        check_rebuilds(arch, arch_kwargs, input_shape, list(history), state)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": _plain(arch_kwargs, "arch_kwargs"),
        "input_shape": input_shape,
        "history": _plain(list(history), "history"),
        "state_dict": state,
        "training": bool(model.training),
        # the modules whose mode differs from the model's (a frozen BatchNorm), the frozen parameters
        "other_mode": [n for n, m in model.named_modules() if n and m.training != model.training],
        "frozen": [n for n, q in model.named_parameters() if not q.requires_grad],
        "meta": _plain(dict(meta or {}), "meta"),
        "versions": _versions(),
    }
    return atomic_torch_save(payload, _writable_path(path))


def load_pruned(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (``torch.load(weights_only=True)``).

    The returned model carries ``robustprune_meta`` (the saved ``meta`` dict),
    ``robustprune_history`` (so it can be pruned further and saved again) and the saved
    train/eval modes (module by module) and ``requires_grad`` flags."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path must be a checkpoint file path, got {type(path).__name__}.", argument="path")
    map_location = check_map_location(map_location)
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
    fields = _checked_payload(payload, path)
    arch = fields["arch"]
    try:
        model = create_model(arch, input_shape=fields["input_shape"], **fields["arch_kwargs"])
    except Exception as exc:
        raise CheckpointError(
            f"Cannot rebuild the model saved in '{path}' from arch={arch!r} and its arch_kwargs "
            f"({type(exc).__name__}: {first_line(exc)})."
        ) from exc
    try:
        model = model.to(map_location) if map_location is not None else model
        replay_history(model, fields["history"])
    except Exception as exc:
        raise CheckpointError(
            f"Cannot replay the pruning history saved in '{path}' on '{arch}' (history: {first_line(exc)})."
        ) from exc
    _check_state_fits(model, fields["state_dict"], path, arch)
    try:
        model.load_state_dict(fields["state_dict"], strict=True)
    except Exception as exc:
        raise CheckpointError(
            f"The weights in '{path}' do not fit the rebuilt '{arch}' (state_dict: {first_line(exc)}); "
            "the checkpoint's architecture arguments or pruning history are inconsistent."
        ) from exc
    model.train(fields["training"])
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    unknown = [n for n in fields["other_mode"] if n not in modules] + [n for n in fields["frozen"] if n not in params]
    if unknown:
        raise CheckpointError(f"'{path}' names modules or parameters the rebuilt '{arch}' does not have: {unknown[:3]}.")
    for name in fields["other_mode"]:
        modules[name].training = not fields["training"]
    for name in fields["frozen"]:
        params[name].requires_grad_(False)
    model.robustprune_meta = fields["meta"]
    return model


# --------------------------------------------------------------------------- helpers


def _writable_path(path: Any) -> Path:
    """The checkpoint's destination: a file path (not a directory) whose parent can be made."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path must be a file path, got {type(path).__name__}.", argument="path")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a directory; give a file path for the checkpoint, e.g. '{path / 'pruned.pt'}'.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot create the directory '{path.parent}' for the checkpoint ({type(exc).__name__}: "
            f"{exc.strerror or exc})."
        ) from exc
    if not os.access(path.parent, os.W_OK):
        raise CheckpointError(f"Cannot write the checkpoint '{path}': '{path.parent}' is not writable.")
    return path


def _checked_payload(payload: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The fields of a loaded checkpoint, each checked; a :class:`CheckpointError` naming
    the first bad field otherwise."""

    def bad(field: str, expected: str) -> CheckpointError:
        value = payload.get(field)
        return CheckpointError(
            f"'{path}' is a malformed robustprune checkpoint: field '{field}' should be {expected}, "
            f"got {type(value).__name__}{'' if value is None else ' ' + repr(value)[:60]}."
        )

    version = payload.get("version")
    if not is_int(version) or version < 1:
        raise bad("version", "a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' uses checkpoint format {version}; this robustprune reads up to {FORMAT_VERSION}. "
            "Upgrade robustprune."
        )
    arch = payload.get("arch")
    if not isinstance(arch, str) or not arch:
        raise bad("arch", "a model registry name (str)")
    kwargs = payload.get("arch_kwargs")
    if kwargs is not None and not (isinstance(kwargs, Mapping) and all(isinstance(k, str) for k in kwargs)):
        raise bad("arch_kwargs", "a dict with str keys")
    shape = payload.get("input_shape")
    if shape is not None and not (
        isinstance(shape, (list, tuple)) and shape and all(is_int(s) and s > 0 for s in shape)
    ):
        raise bad("input_shape", "a list of positive integers or None")
    state = payload.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise bad("state_dict", "a dict of tensors")
    meta = payload.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise bad("meta", "a dict")
    training = payload.get("training", False)
    if not isinstance(training, bool):
        raise bad("training", "a bool")
    names = {}
    for field in ("other_mode", "frozen"):
        value = payload.get(field) or []
        if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
            raise bad(field, "a list of names")
        names[field] = value
    history = payload.get("history") or []
    try:
        history = check_history(history)
    except InvalidArgumentError as exc:
        raise CheckpointError(f"'{path}' is a malformed robustprune checkpoint: {exc}") from exc
    return {
        "arch": arch, "arch_kwargs": dict(kwargs or {}), "input_shape": tuple(shape) if shape else None,
        "state_dict": state, "meta": dict(meta or {}), "training": training, "history": history, **names,
    }


def _check_state_fits(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str) -> None:
    """Every tensor of ``state`` has the shape of the rebuilt model's (before loading any)."""
    detail = state_mismatch(model, state)
    if detail:
        raise CheckpointError(
            f"The weights in '{path}' do not fit the rebuilt '{arch}' (state_dict: {detail}); the "
            "checkpoint's architecture arguments or pruning history are inconsistent."
        )


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
