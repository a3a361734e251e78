"""Checks a run makes before it writes anything: the model options fit the model, the
checkpoint exists and fits the data."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from pathlib import Path

from robustprune.checkpoint import load_pruned
from robustprune.data import DatasetInfo, create_datasets, dataset_info
from robustprune.errors import InvalidArgumentError, RecipeError, RobustPruneError
from robustprune.models import create_model, model_spec
from robustprune.recipe.config import Recipe

__all__ = ["preflight", "model_options"]


def preflight(variants: Iterable[Recipe]) -> None:
    """Fail before anything is written: unknown model options, a missing checkpoint or one
    that does not fit the data."""
    for r in variants:
        if r.data.options:  # the options may change the shape (digits size=...)
            d = r.data
            info = create_datasets(d.name, root=d.root, download=d.download, seed=0, **d.options).info
        else:  # static for the torchvision datasets: no file access yet
            info = dataset_info(r.data.name)
        if r.checkpoint is not None:
            _check_checkpoint(r, r.checkpoint, info)
        else:
            _check_model(r, info)


def model_options(name: str) -> list[str]:
    """The architecture options of a registered model (its class's keyword arguments)."""
    try:
        model = create_model(name)
    except RobustPruneError:
        return []
    params = inspect.signature(type(model).__init__).parameters
    skip = {"self", "num_classes", "input_shape", "mean", "std"}
    return [p for p, v in params.items() if p not in skip and v.kind is not inspect.Parameter.VAR_KEYWORD]


def _check_checkpoint(r: Recipe, path: str, info: DatasetInfo) -> None:
    if not Path(path).is_file():
        raise RecipeError(f"{r.source}: checkpoint.path = {path!r} does not exist.")
    spec = model_spec(load_pruned(path))
    shape = tuple(spec.input_shape) if spec is not None and spec.input_shape else None
    classes = spec.kwargs.get("num_classes") if spec is not None else None
    if (shape is not None and shape != tuple(info.input_shape)) or (
        classes is not None and classes != info.num_classes
    ):
        raise RecipeError(
            f"{r.source}: checkpoint.path = {path!r} holds a model for inputs "
            f"{shape} and {classes} classes, but [data] '{r.data.name}' gives inputs "
            f"{tuple(info.input_shape)} and {info.num_classes} classes; use the data the "
            "model was trained on (dataset options such as size= included)."
        )


def _check_model(r: Recipe, info: DatasetInfo) -> None:
    assert r.model is not None
    try:
        create_model(
            r.model.name, num_classes=info.num_classes, input_shape=info.input_shape,
            mean=info.mean, std=info.std, **r.model.options,
        )
    except RobustPruneError as exc:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if bad:
            allowed = model_options(r.model.name)
            raise RecipeError(
                f"{r.source}: unknown key 'model.{bad.group(1)}' in [model] (model "
                f"'{r.model.name}'). Allowed keys: name"
                + (f", {', '.join(allowed)}" if allowed else "")
                + "."
            ) from exc
        if isinstance(exc, (InvalidArgumentError, RecipeError)):
            raise RecipeError(f"{r.source}: [model] {exc}") from exc
        raise
