"""The speed flags shared by training (:class:`robustprune.train.FitConfig`) and the robust
evaluation (:func:`robustprune.attacks.robust_accuracy`): the channels-last memory format,
``torch.compile`` and CUDA-graph replay. One validation, one resolution to a compile mode,
and one context that puts a model on that path and takes it off again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError

__all__ = ["COMPILE_MODES", "check_speed_flags", "compile_mode_of", "fast_path", "path_label"]

#: the ``torch.compile`` modes accepted as ``compile=``
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_speed_flags(channels_last: Any, compile: Any, cuda_graphs: Any) -> None:
    """Refuse flags of the wrong type, an unknown compile mode, and CUDA graphs combined with
    a compile mode that does not replay them."""
    for name, value in (("channels_last", channels_last), ("cuda_graphs", cuda_graphs)):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{name} must be True or False, got {value!r}.", argument=name)
    if not (isinstance(compile, bool) or compile in COMPILE_MODES):
        raise InvalidArgumentError(
            f"compile must be True/False or a torch.compile mode ({', '.join(COMPILE_MODES)}), got {compile!r}.",
            argument="compile",
        )
    if cuda_graphs and isinstance(compile, str) and compile not in ("default", "reduce-overhead"):
        raise InvalidArgumentError(
            f"cuda_graphs=True replays CUDA graphs (compile mode 'reduce-overhead'); compile={compile!r} "
            "is another mode. Drop one of the two.",
            argument="cuda_graphs",
        )


def check_cuda_graphs(cuda_graphs: bool, device: torch.device, where: str) -> None:
    """CUDA graphs need a CUDA device."""
    if cuda_graphs and device.type != "cuda":
        raise InvalidArgumentError(
            f"cuda_graphs=True needs a CUDA device; {where} runs on {device}. Drop cuda_graphs (or pass "
            "device='cuda').",
            argument="cuda_graphs",
        )


def compile_mode_of(compile: bool | str, cuda_graphs: bool) -> str | None:
    """The ``torch.compile`` mode the flags ask for, None for eager."""
    if cuda_graphs:
        return "reduce-overhead"
    if compile is False:
        return None
    return "default" if compile is True else str(compile)


def path_label(channels_last: bool, mode: str | None) -> str:
    """How the forwards ran, for a result: ``"eager"``, ``"eager, channels-last"``,
    ``"compiled (default)"``..."""
    label = "eager" if mode is None else f"compiled ({mode})"
    return label + (", channels-last" if channels_last else "")


@contextlib.contextmanager
def fast_path(net: nn.Module, channels_last: bool, mode: str | None) -> Iterator[nn.Module]:
    """``net`` on the asked path: its 4-D parameters and buffers in channels-last (put back
    in their previous format afterwards) and compiled with ``mode`` (None: not compiled).
    Yields the module to call; the weights' values never change."""
    moved: list[torch.Tensor] = []
    if channels_last:
        for t in (*net.parameters(), *net.buffers()):
            if t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                moved.append(t)
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield net if mode is None else torch.compile(net, mode=mode)
    finally:
        for t in moved:
            t.data = t.data.contiguous()
