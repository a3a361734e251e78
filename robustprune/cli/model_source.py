"""Where a command's model comes from: ``--checkpoint PATH`` (a :func:`~robustprune.save_pruned`
file) or ``--model NAME`` (a registered, ``timm:`` or ``torchvision:`` model) with
``--model-option``, ``--num-classes``, ``--input-shape C,H,W`` and ``--weights PATH`` (a
state_dict or a save_pruned file of the same architecture, see
:func:`robustprune.models.load_weights`). The same options on ``prune``, ``analyze``,
``eval`` and ``export``, and one function, :func:`model_from_args`, that builds the model.

Without ``--weights`` a ``--model`` has random weights (or the library's pretrained ones with
``--model-option pretrained=true`` for timm, ``--model-option weights=DEFAULT`` for
torchvision, read from the local cache). The input shape and class count come from
``--input-shape``/``--num-classes``, else from the dataset (``--data``) when the command has
one, else from the model's defaults (1000 classes for the passthroughs, 10 otherwise).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from robustprune.checkpoint import load_pruned
from robustprune.cli.arguments import input_shape, integer
from robustprune.data import DatasetInfo
from robustprune.errors import InvalidArgumentError, RecipeError, RobustPruneError
from robustprune.models import create_model, load_weights
from robustprune.models.passthrough import PREFIXES
from robustprune.recipe import parse_override

__all__ = ["add_model_source", "model_from_args", "model_flags_given", "options"]

#: the flags that only apply to --model
_MODEL_FLAGS = (("--model-option", "model_option"), ("--num-classes", "num_classes"),
                ("--input-shape", "input_shape"), ("--weights", "weights"))


def add_model_source(p: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """``--checkpoint PATH`` (or, ``positional``, ``CHECKPOINT``) or ``--model NAME`` and
    the options of ``--model``."""
    src = p.add_mutually_exclusive_group(required=True)
    if positional:
        src.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="a checkpoint written by save_pruned / `robustprune prune`")
    else:
        src.add_argument("--checkpoint", metavar="PATH", help="a checkpoint written by save_pruned / `robustprune run`")
    src.add_argument("--model", metavar="NAME", help="a model: registered (`robustprune list models`), timm:<name> or torchvision:<name>")
    g = p.add_argument_group("--model options")
    g.add_argument("--weights", metavar="PATH", help="weights for --model: a state_dict file (plain, or under 'state_dict'/'model') or a save_pruned file of the same unpruned architecture")
    g.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", help="model option for --model, e.g. widths=[16,32] or pretrained=true (repeatable)")
    g.add_argument("--num-classes", type=integer(1), default=None, metavar="K", help="classifier outputs of --model (default: the dataset's, else 1000 for timm:/torchvision:, 10 otherwise)")
    g.add_argument("--input-shape", type=input_shape, default=None, metavar="C,H,W", help="input shape of --model, e.g. 3,224,224 (default: the dataset's, else the model's)")


def model_flags_given(args: argparse.Namespace) -> list[str]:
    """The --model-only flags that were given."""
    return [flag for flag, attr in _MODEL_FLAGS if getattr(args, attr, None)]


def model_from_args(args: argparse.Namespace, info: DatasetInfo | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``args`` and its meta data (a checkpoint's saved meta, or where a
    ``--model`` came from); ``info``: the dataset that sets the model's input shape,
    classes and input statistics (the explicit flags win)."""
    if args.checkpoint:
        given = model_flags_given(args)
        if given:
            raise InvalidArgumentError(f"{', '.join(given)} apply to --model; a checkpoint records its own "
                                       "architecture and weights.")
        return load_checkpoint(args.checkpoint)
    name = args.model
    kwargs: dict[str, Any] = options(args.model_option, "--model-option")
    if info is not None:
        kwargs.update(num_classes=info.num_classes, input_shape=tuple(info.input_shape), mean=info.mean, std=info.std)
    elif not name.startswith(PREFIXES):
        kwargs.setdefault("num_classes", 10)
    else:
        kwargs.setdefault("num_classes", 1000)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.input_shape is not None:
        kwargs["input_shape"] = tuple(args.input_shape)
    model = _create(name, kwargs, args.model_option)
    meta: dict[str, Any] = {"model_source": {"model": name}}
    if args.weights:
        load_weights(model, args.weights)
        meta["model_source"]["weights"] = str(args.weights)
    if info is not None:
        meta["data"] = {"name": info.name}
    return model, meta


def load_checkpoint(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """A save_pruned file's model on the CPU and its saved meta data."""
    if Path(path).is_dir():
        raise InvalidArgumentError(f"Checkpoint '{path}' is a directory; pass a checkpoint file (.pt).")
    if not Path(path).is_file():
        raise InvalidArgumentError(f"Checkpoint '{path}' does not exist.")
    model = load_pruned(path, map_location="cpu")
    return model, dict(getattr(model, "robustprune_meta", None) or {})


def options(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (TOML values, bare strings allowed) as a dict."""
    out: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except RecipeError as exc:
            raise InvalidArgumentError(f"{flag} {item}: {str(exc).split(': ', 1)[-1]}") from None
        out[key] = value
    return out


def _create(name: str, kwargs: dict[str, Any], given: Sequence[str]) -> nn.Module:
    num_classes = kwargs.pop("num_classes")
    try:
        return create_model(name, num_classes, **kwargs)
    except RobustPruneError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        if not given:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgumentError(f"Model '{name}' rejects the options {', '.join(given)}: {first}.") from exc
