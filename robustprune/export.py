"""Export a (pruned) model for deployment: ONNX, TorchScript or a ``torch.export`` program.

:func:`export` writes the file, loads it back with the runtime that will serve it
(onnxruntime for ONNX, ``torch.jit.load`` for TorchScript, ``torch.export.load`` for an
exported program), runs it on a fresh batch and reports the largest difference from the
PyTorch model's outputs. A difference above the tolerance is an error, never a file that
silently computes something else.

ONNX needs the optional extra ``pip install robustprune[export]`` (onnx + onnxruntime).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _inputs, _modes
from .errors import InvalidArgumentError, RobustPruneError, UnknownNameError

__all__ = ["FORMATS", "ExportError", "ExportResult", "export"]

#: the formats :func:`export` writes, with their usual file suffix
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


class ExportError(RobustPruneError):
    """The model could not be exported, or the exported file computes another function."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and how closely the file reproduces the model."""

    path: str
    format: str
    input_shape: list[int]
    max_abs_diff: float
    max_abs_output: float
    checked_with: str
    batch_sizes: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"exported {self.format} to {self.path} (inputs {self.input_shape}, batch "
                f"{'/'.join(map(str, self.batch_sizes))}); {self.checked_with}: max |Δ| = "
                f"{self.max_abs_diff:.3g} (outputs up to {self.max_abs_output:.3g})")


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    example_inputs: torch.Tensor | None = None,
    atol: float = 1e-4,
    opset: int | None = None,
) -> ExportResult:
    """Write ``model`` to ``path`` in ``format`` and check the file against the model.

    Args:
        model: the model (pruned or not), on the CPU or a GPU; exported in eval mode, its own
            train/eval modes are restored afterwards.
        path: the file to write (its folder must exist).
        format: ``"onnx"`` (onnxruntime checks it; needs the ``[export]`` extra),
            ``"torchscript"`` (``torch.jit.trace``) or ``"exported-program"``
            (``torch.export``; ``torch.export.load(path).module()`` runs it). ONNX and the
            exported program take any batch size; a TorchScript trace is checked at the
            traced batch and another one.
        example_inputs: one batch of inputs (default: inferred from the model, as
            :func:`robustprune.prune` does: the recorded ``input_shape``, timm's
            ``pretrained_cfg``, a torchvision classifier's 3x224x224).
        atol: the largest accepted difference, relative to the largest output magnitude
            (``max|Δ| <= atol * max(1, max|y|)``).
        opset: ONNX opset version (default: the exporter's).

    Returns:
        an :class:`ExportResult` with the measured ``max_abs_diff``.

    Raises:
        UnknownNameError: an unknown ``format``.
        InvalidArgumentError: ``path`` is a folder or its folder is missing; bad ``atol``.
        ExportError: the exporter failed, the extra is missing, or the file's outputs differ
            from the model's by more than the tolerance.

    The file is written next to ``path`` under a temporary name, checked, and only then moved
    to ``path``: a failed or refused export leaves ``path`` as it was (an older file there is
    kept).
    """
    fmt, target = _check_arguments(model, path, format, atol, opset)
    inputs = _inputs.resolve_example_inputs(model, example_inputs)
    if not isinstance(inputs, torch.Tensor):
        raise InvalidArgumentError("export takes a model with one input tensor; got several example inputs.",
                                   argument="example_inputs")
    if not inputs.is_floating_point():
        raise InvalidArgumentError(
            f"example_inputs must be floating point (the check feeds random values in [0, 1]), got {inputs.dtype}.",
            argument="example_inputs")
    x = inputs[:1]
    check = _check_batch(x)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{FORMATS[fmt]}")
    os.close(fd)
    tmp = Path(name)
    try:
        with _modes.eval_mode(model):
            with torch.no_grad():
                expected = _inputs.first_forward(model, check, "export (example_inputs)")
            _inputs.check_logits(expected, check.shape[0], what="export: the model")
            _write(model, x, tmp, fmt, opset)
            got, how = _run_exported(tmp, fmt, check)
        got = got.to(expected.device, expected.dtype)
        diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
        scale = float(expected.abs().max())
        if not diff <= atol * max(1.0, scale):
            raise ExportError(
                f"The exported {fmt} file computes another function: max |Δ| = {diff:.3g} against outputs up "
                f"to {scale:.3g} (tolerance {atol:g} relative). Nothing was written; try another format "
                "or report the model."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(str(target), fmt, list(x.shape[1:]), diff, scale, how, [1, int(check.shape[0])])


def _check_arguments(model: Any, path: Any, format: Any, atol: Any, opset: Any) -> tuple[str, Path]:
    _inputs.check_materialized(model, "export")
    if not isinstance(format, str) or format not in FORMATS:
        raise UnknownNameError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 < atol < float("inf"):
        raise InvalidArgumentError(f"atol must be a positive finite number, got {atol!r}.", argument="atol")
    if opset is not None:
        _inputs.check_int("opset", opset, low=7, why="an ONNX opset version, e.g. 17")
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path must be a file path, got {type(path).__name__}.", argument="path")
    target = Path(path)
    if target.is_dir():
        raise InvalidArgumentError(f"'{target}' is a folder; give a file name, e.g. {target / ('model' + FORMATS[format])}.",
                                   argument="path")
    if not target.parent.is_dir():
        raise InvalidArgumentError(f"The folder of '{target}' does not exist; create it first.", argument="path")
    if format == "onnx":
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install 'robustprune[export]'.")
    return format, target


def _check_batch(x: torch.Tensor) -> torch.Tensor:
    """A fresh batch of 3 examples in [0, 1] (not the traced one: a trace that baked the
    batch size or the values in shows up as a difference)."""
    gen = torch.Generator().manual_seed(1)
    return torch.rand((3, *x.shape[1:]), generator=gen).to(device=x.device, dtype=x.dtype)


def _write(model: nn.Module, x: torch.Tensor, target: Path, fmt: str, opset: int | None) -> None:
    try:
        if fmt == "onnx":
            _write_onnx(model, x, target, opset)
        elif fmt == "torchscript":
            traced = torch.jit.trace(model, x, check_trace=False)
            traced.save(str(target))
        else:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.export.export(model, (x.expand(2, *x.shape[1:]).contiguous(),), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(target))
    except RobustPruneError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"Exporting to {fmt} failed: {type(exc).__name__}: {first}. Try another format.") from exc


def _write_onnx(model: nn.Module, x: torch.Tensor, target: Path, opset: int | None) -> None:
    """The TorchScript-based ONNX exporter (fast, no onnxscript needed), dynamic batch."""
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": ["logits"],
                              "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}, "dynamo": False}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    torch.onnx.export(model, (x,), str(target), **kwargs)


def _run_exported(target: Path, fmt: str, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The exported file's outputs on ``x`` and the runtime that produced them."""
    try:
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            out = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().float().numpy()})[0]
            return torch.from_numpy(out), f"onnxruntime {ort.__version__}"
        if fmt == "torchscript":
            loaded = torch.jit.load(str(target), map_location=x.device)
            with torch.no_grad():
                return loaded(x), "torch.jit.load"
        loaded = torch.export.load(str(target)).module()
        with torch.no_grad():
            return loaded(x), "torch.export.load"
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"The exported {fmt} file does not run: {type(exc).__name__}: {first}. "
                          "Nothing was written; try another format.") from exc
