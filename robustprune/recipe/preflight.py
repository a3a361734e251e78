"""Checks a run makes before it writes anything: the data loads (downloaded first when the
recipe says ``download = true``), the model options fit the model, the checkpoint (or the
model's ``weights`` file) exists and fits the model and the data. The same boundary helpers serve the command line: :func:`data_errors`
(opening a dataset with user-given options), :func:`model_for_data` (a registered model
with user-given options) and :func:`data_mismatch` (a loaded model against a dataset)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import inspect
import json
import logging
import os
import re
import urllib.error
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from robustprune.checkpoint import load_pruned
from robustprune.data import DatasetInfo, create_datasets, dataset_info
from robustprune.errors import (
    DatasetNotFoundError,
    InvalidArgumentError,
    RecipeError,
    RobustPruneError,
)
from robustprune.models import create_model, load_weights, model_spec
from robustprune.recipe.config import Recipe

__all__ = ["preflight", "model_options", "data_errors", "model_for_data", "data_mismatch", "NETWORK_ERRORS"]

logger = logging.getLogger(__name__)

#: what a download raises when the network is unreachable (urllib, http.client, sockets)
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
)


def preflight(variants: Iterable[Recipe], *, fetch: bool = True) -> None:
    """Fail before anything is written: data that cannot be loaded (missing files, a failed
    download, bad dataset options, a validation split that leaves no example), unknown or
    bad model options, a missing checkpoint or one that does not fit the data.

    ``fetch=False`` (a dry run) downloads nothing: a ``download = true`` dataset that is
    not there yet is checked with its static facts only."""
    infos: dict[str, DatasetInfo | None] = {}
    for r in variants:
        key = json.dumps(dataclasses.asdict(r.data), sort_keys=True, default=str)
        if key not in infos:
            infos[key] = _data_info(r, fetch)
        info = infos[key]
        if info is None:
            continue
        if r.checkpoint is not None:
            _check_checkpoint(r, r.checkpoint, info)
        else:
            _check_model(r, info)


@contextlib.contextmanager
def data_errors(name: str, root: Any = None, options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Inside: opening dataset ``name``. A failed download (no network) becomes a
    :class:`~robustprune.errors.DatasetNotFoundError` that says how to place the files, and
    a ``TypeError``/``ValueError`` of the dataset's factory when options were given an
    :class:`~robustprune.errors.InvalidArgumentError` naming them."""
    try:
        yield
    except RobustPruneError:
        raise
    except Exception as exc:
        if _is_download_failure(exc):
            folder = Path(root if root is not None else os.environ.get("ROBUSTPRUNE_DATA", "data"))
            raise DatasetNotFoundError(
                f"Downloading dataset '{name}' failed ({_first_line(exc)}): no network? Download its "
                f"files on a machine that has one and place them under '{folder}' (data.root in a "
                "recipe, root= or $ROBUSTPRUNE_DATA), laid out as torchvision writes them, then run "
                "again with download = false."
            ) from exc
        if options and isinstance(exc, (TypeError, ValueError)):
            given = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise InvalidArgumentError(
                f"Dataset '{name}' rejects the options {given}: {_first_line(exc)}.", argument="options"
            ) from exc
        raise


def model_for_data(name: str, info: DatasetInfo, options: Mapping[str, Any]) -> nn.Module:
    """``create_model(name)`` for the dataset's input shape, classes and statistics, with the
    user's architecture ``options``; a value the model's constructor rejects is an
    :class:`~robustprune.errors.InvalidArgumentError` naming the options."""
    try:
        return create_model(
            name, num_classes=info.num_classes, input_shape=info.input_shape,
            mean=info.mean, std=info.std, **options,
        )
    except RobustPruneError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        if not options:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise InvalidArgumentError(
            f"Model '{name}' rejects the options {given}: {_first_line(exc)}.", argument="options"
        ) from exc


def data_mismatch(model: nn.Module, info: DatasetInfo) -> str | None:
    """Why ``model`` (as recorded by ``create_model``/``load_pruned``) does not fit the
    dataset ``info`` (input shape, number of classes), or None when it fits or is unknown."""
    spec = model_spec(model)
    shape = tuple(spec.input_shape) if spec is not None and spec.input_shape else None
    classes = spec.kwargs.get("num_classes") if spec is not None else None
    if (shape is not None and shape != tuple(info.input_shape)) or (
        classes is not None and classes != info.num_classes
    ):
        return (
            f"holds a model for inputs {shape} and {classes} classes, but dataset '{info.name}' gives "
            f"inputs {tuple(info.input_shape)} and {info.num_classes} classes"
        )
    return None


def model_options(name: str) -> list[str]:
    """The architecture options of a registered model (its class's keyword arguments)."""
    try:
        model = create_model(name)
    except RobustPruneError:
        return []
    params = inspect.signature(type(model).__init__).parameters
    skip = {"self", "num_classes", "input_shape", "mean", "std"}
    return [p for p, v in params.items() if p not in skip and v.kind is not inspect.Parameter.VAR_KEYWORD]


def _data_info(r: Recipe, fetch: bool) -> DatasetInfo | None:
    """The dataset's info, loading it as the run will (its validation split included)."""
    d = r.data
    try:
        with data_errors(d.name, d.root, d.options):
            return create_datasets(
                d.name, root=d.root, download=d.download and fetch, seed=0, validation=d.validation,
                **d.options,
            ).info
    except DatasetNotFoundError as exc:
        if fetch or not d.download:
            raise _data_error(r, exc) from exc
        logger.info("[data] '%s' is not there yet; the run will download it", d.name)
        return None if d.options else dataset_info(d.name)
    except RobustPruneError as exc:
        raise _data_error(r, exc) from exc


def _data_error(r: Recipe, exc: RobustPruneError) -> RecipeError:
    """``exc`` as a RecipeError naming the file and the key: the option the error names,
    else its ``argument`` (``validation``), else the section."""
    argument = getattr(exc, "argument", None)
    named = [k for k in r.data.options if re.search(rf"\b{re.escape(k)}\b", str(exc))]
    if argument in (None, "options") and len(named) == 1:
        argument = named[0]
    key = f"data.{argument}" if argument not in (None, "options") else "[data]"
    return RecipeError(f"{r.source}: {key}: {exc}")


def _check_checkpoint(r: Recipe, path: str, info: DatasetInfo) -> None:
    if not Path(path).is_file():
        what = "is a directory, not a checkpoint file" if Path(path).is_dir() else "does not exist"
        raise RecipeError(f"{r.source}: checkpoint.path = {path!r} {what}.")
    try:
        model = load_pruned(path)
    except RobustPruneError as exc:
        raise RecipeError(f"{r.source}: checkpoint.path = {path!r}: {exc}") from exc
    mismatch = data_mismatch(model, info)
    if mismatch:
        raise RecipeError(
            f"{r.source}: checkpoint.path = {path!r} {mismatch}; use the data the model was trained "
            "on (dataset options such as size= included)."
        )


def _check_model(r: Recipe, info: DatasetInfo) -> None:
    assert r.model is not None
    try:
        model = model_for_data(r.model.name, info, r.model.options)
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
        named = [k for k in r.model.options if re.search(rf"\b{re.escape(k)}\b", str(exc))]
        key = f"model.{named[0]}" if len(named) == 1 else "model.name" if "nknown model" in str(exc) else "[model]"
        raise RecipeError(f"{r.source}: {key}: {exc}") from exc
    _check_weights(r, model)


def _check_weights(r: Recipe, model: nn.Module) -> None:
    """``model.weights`` exists and fits the model; ``train.epochs = 0`` has weights."""
    assert r.model is not None
    if r.train is not None and r.train.epochs == 0 and r.model.weights is None:
        raise RecipeError(
            f"{r.source}: train.epochs = 0 would keep the random initialization; set model.weights = "
            '"PATH" (start from a weights file) or train for at least one epoch.'
        )
    if r.model.weights is not None:
        try:
            load_weights(model, r.model.weights)
        except RobustPruneError as exc:
            raise RecipeError(f"{r.source}: model.weights = {r.model.weights!r}: {exc}") from exc


def _is_download_failure(exc: BaseException) -> bool:
    """A network error, or torchvision's "Error downloading" after every mirror failed."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NETWORK_ERRORS) or str(exc).startswith("Error downloading"):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(":") if text else type(exc).__name__
