"""``timm:<name>`` and ``torchvision:<name>``: those libraries' models with random weights
(nothing is downloaded), built by :func:`robustprune.models.create_model`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from robustprune.errors import UnknownNameError

__all__ = ["PREFIXES", "create_passthrough"]

#: the name prefixes that pass through to another library
PREFIXES = ("timm:", "torchvision:")


def create_passthrough(
    name: str, num_classes: int, input_shape: Sequence[int] | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, tuple[int, ...]]:
    """The model ``lib:arch`` with ``num_classes`` outputs, and its input shape ``(C, H, W)``
    (``input_shape``, else timm's ``pretrained_cfg["input_size"]``, else 3x224x224)."""
    lib, _, arch = name.partition(":")
    if lib == "timm":
        import timm

        if not timm.is_model(arch):
            raise UnknownNameError(f"timm has no model '{arch}' (see timm.list_models()).")
        extra = dict(kwargs)
        if input_shape is not None and "img_size" not in extra and _timm_takes_img_size(arch):
            extra["img_size"] = int(input_shape[-1])
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        shape = tuple(input_shape or cfg.get("input_size", (3, 224, 224)))
        return model, shape
    import torchvision

    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as exc:
        raise UnknownNameError(
            f"torchvision has no model '{arch}' (see torchvision.models.list_models())."
        ) from exc
    return model, tuple(input_shape or (3, 224, 224))


def _timm_takes_img_size(arch: str) -> bool:
    return any(k in arch for k in ("vit", "deit", "swin", "beit", "eva"))
