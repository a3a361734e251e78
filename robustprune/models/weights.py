"""Weights for a model: a file (:func:`load_weights`) or a library's pretrained weights from
the local cache (:func:`pretrained_passthrough`, used by ``create_model("timm:...",
pretrained=True)`` and ``create_model("torchvision:...", weights="DEFAULT")``).

:func:`load_weights` reads a plain ``state_dict`` file, one wrapped as ``{"state_dict": ...}``
or ``{"model": ...}`` (training scripts, DDP's ``module.`` prefix), or a
:func:`robustprune.save_pruned` file, always with ``torch.load(weights_only=True)``, and
checks every name and shape against the model before it copies anything: a file that does
not fit is a :class:`WeightsError` and the model is left untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune._inputs import check_materialized
from robustprune.errors import InvalidArgumentError, RobustPruneError

__all__ = ["WeightsError", "load_weights", "read_state_dict", "pretrained_passthrough"]

#: the ``pretrained``/``weights`` keywords of the passthrough libraries (never recorded in a
#: model's spec: the saved state dict carries the weights)
WEIGHT_KEYWORDS = ("pretrained", "weights")


class WeightsError(RobustPruneError, ValueError):
    """Weights that cannot be had (offline and not cached) or that do not fit the model."""


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Copy the weights in ``path`` into ``model`` (in place) and return it.

    ``path`` holds a ``state_dict`` (plain, or under ``"state_dict"``/``"model"``, keys
    optionally prefixed ``module.``) or a :func:`robustprune.save_pruned` checkpoint of the
    same (unpruned) architecture. The input-normalization buffers of a model built with
    ``mean``/``std`` may be absent from the file (they come from ``create_model``).

    Raises:
        WeightsError: no such file, not a weights file, or names/shapes that do not fit
            (listed); nothing is copied then.
    """
    check_materialized(model, "load_weights")
    state, pruned = read_state_dict(path)
    own = model.state_dict()
    state = _align_keys(state, own)
    missing = [k for k in own if k not in state and not _optional(k, state)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
             for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(items)}): {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
                 for label, items in (("shapes differ", wrong), ("missing in the file", missing),
                                      ("not in the model", unexpected)) if items]
        hint = ("it is a pruned checkpoint: load it with robustprune.load_pruned (--checkpoint on the "
                "command line)" if pruned else
                "build the model the file was trained as (its num_classes, input shape and options)")
        raise WeightsError(f"The weights in '{path}' do not fit the {type(model).__name__}: "
                           f"{'; '.join(parts)}. Nothing was loaded; {hint}.")
    _check_values(state, own, path)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))
    return model


def _check_values(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: Any) -> None:
    """Before anything is copied: the file's values are finite, of a kind the model's
    tensors can hold (no integers into float weights), and an input normalization's std is
    positive (Normalize refuses std <= 0 when it is built)."""
    for key, value in state.items():
        target = own[key]
        if target.is_floating_point() and not (value.is_floating_point() or value.numel() == 0):
            raise WeightsError(f"The weights in '{path}' are not floating point ('{key}' is {value.dtype}, the "
                               f"model's is {target.dtype}). Nothing was loaded; is it a quantized or index file?")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeightsError(f"The weights in '{path}' have NaN or infinite values ('{key}'). Nothing was loaded; "
                               "the training that wrote them diverged.")
        if key.rsplit(".", 1)[-1] == "std" and key.rsplit(".", 1)[0].endswith("normalize") and bool((value <= 0).any()):
            raise WeightsError(f"The weights in '{path}' have an input normalization std <= 0 ('{key}'). Nothing "
                               "was loaded.")


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors of a weights file (``weights_only``) and whether it is a pruned
    :func:`~robustprune.save_pruned` checkpoint."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"weights must be a file path, got {type(path).__name__}.", argument="weights")
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise WeightsError(f"Weights file '{file}' {what}; give a .pt/.pth/.safetensors state_dict file.")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload: Any = load_file(str(file))
        else:
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"'{file}' is not a weights file torch.load(weights_only=True) can read ({first}).") from exc
    pruned = False
    if isinstance(payload, Mapping) and payload.get("format") == "robustprune.pruned":
        pruned = bool(payload.get("history"))
        payload = payload.get("state_dict")
    elif isinstance(payload, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(payload.get(key), Mapping):
                payload = payload[key]
                break
    if not isinstance(payload, Mapping) or not payload or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise WeightsError(f"'{file}' holds no state_dict (a mapping of names to tensors, possibly under "
                           "'state_dict' or 'model').")
    return dict(payload), pruned


def pretrained_passthrough(
    build: Callable[[Any], nn.Module], weights: Any, library: str, arch: str
) -> nn.Module:
    """``build(weights)``: a library model with its pretrained weights (``weights``), read
    from the local cache or downloaded. When that fails but ``build(None)`` works, the
    failure was the weights': a :class:`WeightsError` that says where the cache is."""
    try:
        return build(weights)
    except RobustPruneError:
        raise
    except Exception as exc:
        try:
            build(None)
        except Exception:
            raise exc from None  # the architecture's own arguments are at fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"Cannot get the pretrained weights of {library}:{arch} ({type(exc).__name__}: {first}): "
            f"offline and not in the local cache ({_cache_dir(library)})? Download them once on a "
            "machine with a network (the same call), copy the cache here, or load a file with "
            "robustprune.models.load_weights / --weights PATH."
        ) from exc


def _cache_dir(library: str) -> str:
    if library == "timm":
        try:
            from huggingface_hub import constants

            return f"the Hugging Face cache {constants.HF_HUB_CACHE}, $HF_HOME"
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            return "the Hugging Face cache, $HF_HOME"
    return f"{Path(torch.hub.get_dir()) / 'checkpoints'}, $TORCH_HOME"


def _align_keys(state: dict[str, torch.Tensor], own: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``state`` renamed by the prefix change (DDP's ``module.``, a Normalize wrapper's
    ``net.``) that matches the model's names best."""

    def renamed(strip: str, add: str) -> dict[str, torch.Tensor]:
        if strip and not all(k.startswith(strip) for k in state):
            return {}
        return {add + k[len(strip):]: v for k, v in state.items()}

    candidates = [renamed(s, a) for s in ("", "module.", "net.", "module.net.") for a in ("", "net.")]
    return max(candidates, key=lambda c: sum(k in own for k in c))


def _optional(key: str, state: Mapping[str, Any]) -> bool:
    """The Normalize buffers of a wrapped model, when the file has none."""
    return key.startswith("normalize.") and not any(k.startswith("normalize.") for k in state)
