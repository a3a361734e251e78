"""``timm:<name>`` and ``torchvision:<name>``: those libraries' models, built by
:func:`robustprune.models.create_model`: random weights by default (nothing is
downloaded), the library's pretrained weights with ``pretrained=True`` (timm) or
``weights="DEFAULT"`` / ``"IMAGENET1K_V1"`` / a weights enum (torchvision), read from the
local cache (the Hugging Face cache for timm, ``$TORCH_HOME/hub/checkpoints`` for
torchvision) or downloaded; offline and not cached is a
:class:`~robustprune.models.weights.WeightsError`."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from torch import nn

from robustprune.errors import UnknownNameError
from robustprune.models.weights import pretrained_passthrough

__all__ = ["PREFIXES", "create_passthrough", "list_passthrough", "suggest_passthrough"]

#: the name prefixes that pass through to another library
PREFIXES = ("timm:", "torchvision:")


def create_passthrough(
    name: str, num_classes: int, input_shape: Sequence[int] | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, tuple[int, ...]]:
    """The model ``lib:arch`` with ``num_classes`` outputs, and its input shape ``(C, H, W)``
    (``input_shape``, else timm's ``pretrained_cfg["input_size"]``, else 3x224x224)."""
    lib, _, arch = name.partition(":")
    if lib == "timm":
        return _create_timm(arch, num_classes, input_shape, kwargs)
    import torchvision

    extra = dict(kwargs)
    weights = extra.pop("weights", None)
    if arch not in torchvision.models.list_models():
        raise UnknownNameError(f"torchvision has no model '{arch}' (see torchvision.models.list_models()).")
    if weights is None:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    else:
        model = _torchvision_pretrained(arch, weights, num_classes, extra)
    return model, tuple(input_shape or (3, 224, 224))


def suggest_passthrough(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """The ``timm:``/``torchvision:`` name (and ``num_classes``) that rebuilds a model of
    ``model``'s architecture, for a model those libraries built directly; None otherwise.
    timm records its architecture in ``pretrained_cfg``; for torchvision, the builders of
    the model's module whose model (built on the meta device) has the same class and the
    same number of modules (channel pruning changes widths, not the modules)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return f"timm:{cfg['architecture']}", {"num_classes": int(getattr(model, "num_classes", 0) or 0) or None}
    module = type(model).__module__
    if not module.startswith("torchvision.models"):
        return None
    import torch
    import torchvision

    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    classes = heads[-1].out_features if heads else 1000
    count = len(list(model.modules()))
    names = [n for n in torchvision.models.list_models() if torchvision.models.get_model_builder(n).__module__ == module]
    for name in names:
        try:
            with torch.device("meta"):
                candidate = torchvision.models.get_model(name, weights=None, num_classes=classes)
        except Exception:  # a builder with other required arguments: not a candidate
            continue
        if type(candidate) is type(model) and len(list(candidate.modules())) == count:
            return f"torchvision:{name}", {"num_classes": classes}
    return None


def list_passthrough(pattern: str) -> list[str]:
    """``timm:<name>`` / ``torchvision:<name>`` models matching ``pattern`` (``'timm:*'``,
    ``'torchvision:resnet*'``), sorted; empty when the pattern names neither library."""
    out: list[str] = []
    for prefix in PREFIXES:
        lib = prefix[:-1]
        if not fnmatch.fnmatch(prefix, pattern.split(":", 1)[0] + ":"):
            continue
        if lib == "timm":
            import timm

            names = timm.list_models()
        else:
            import torchvision

            names = torchvision.models.list_models()
        out.extend(prefix + n for n in names if fnmatch.fnmatch(prefix + n, pattern))
    return sorted(out)


def _create_timm(
    arch: str, num_classes: int, input_shape: Sequence[int] | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, tuple[int, ...]]:
    import timm

    if not timm.is_model(arch):
        raise UnknownNameError(f"timm has no model '{arch}' (see timm.list_models()).")
    extra = dict(kwargs)
    pretrained = bool(extra.pop("pretrained", False))
    if input_shape is not None and "img_size" not in extra and _timm_takes_img_size(arch):
        extra["img_size"] = int(input_shape[-1])
    if input_shape is not None and "in_chans" not in extra and int(input_shape[0]) != 3:
        extra["in_chans"] = int(input_shape[0])

    def build(weights: Any) -> nn.Module:
        return timm.create_model(arch, pretrained=bool(weights), num_classes=num_classes, **extra)

    model = pretrained_passthrough(build, True, "timm", arch) if pretrained else build(None)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    shape = tuple(input_shape or cfg.get("input_size", (3, 224, 224)))
    return model, shape


def _torchvision_pretrained(arch: str, weights: Any, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """torchvision's ``arch`` with ``weights``; another ``num_classes`` than the weights'
    keeps every pretrained tensor but the classifier's (freshly initialized, as timm does)."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    if isinstance(weights, str):
        key = weights.rsplit(".", 1)[-1]
        if key not in enum.__members__:
            raise UnknownNameError(
                f"torchvision model '{arch}' has no weights '{weights}'; choose one of "
                f"{', '.join(enum.__members__)}."
            )
        weights = enum[key]
    native = len(weights.meta.get("categories") or []) or num_classes

    def build(w: Any) -> nn.Module:
        return torchvision.models.get_model(arch, weights=w, num_classes=native, **kwargs)

    model = pretrained_passthrough(build, weights, "torchvision", arch)
    if native == num_classes:
        return model
    fresh = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    own = fresh.state_dict()
    kept = {k: v for k, v in model.state_dict().items() if k in own and v.shape == own[k].shape}
    fresh.load_state_dict(kept, strict=False)
    return fresh


def _timm_takes_img_size(arch: str) -> bool:
    return any(k in arch for k in ("vit", "deit", "swin", "beit", "eva"))
