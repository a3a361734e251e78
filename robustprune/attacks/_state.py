"""The resumable state of a robust evaluation: per-batch counts in a JSON file (AutoAttack's
own ``state_path`` is unreliable), written atomically by rank 0."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune import distributed
from robustprune._io import atomic_write
from robustprune.errors import InvalidArgumentError

__all__ = ["EvalState", "checksum", "check_state_path"]


class EvalState:
    """Per-batch counts of a robust evaluation kept in a JSON file, so an interrupted
    evaluation resumes where it stopped (AutoAttack's own ``state_path`` is unreliable).
    :meth:`sync` is collective: every rank calls it at the same batch indices."""

    def __init__(
        self, path: str | os.PathLike[str] | None, settings: dict[str, Any],
        ctx: distributed.DistContext,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.settings = settings
        self.ctx = ctx
        self.done: dict[int, list[float]] = {}
        self.loaded: dict[int, list[float]] = {}
        self.pending: dict[int, list[float]] = {}
        check_state_path(path)
        if self.path is None or not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            saved_settings, done = saved["settings"], saved["done"]
            if not isinstance(saved_settings, dict):
                raise TypeError("its settings are not a mapping")
            loaded = {int(k): [float(c) for c in v] for k, v in done.items()}
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            raise InvalidArgumentError(
                f"{self.path} is not a robust_accuracy state file ({type(exc).__name__}: {exc}); "
                "delete it or pass another state_path.",
                argument="state_path",
            ) from exc
        if saved_settings != settings:
            diff = sorted(k for k in set(saved_settings) | set(settings)
                          if saved_settings.get(k) != settings.get(k))
            raise InvalidArgumentError(
                f"The evaluation state {self.path} was written with other settings or another "
                f"model (differs in: {', '.join(diff)}); use another state_path or delete it.",
                argument="state_path",
            )
        self.loaded = loaded
        self.done = dict(self.loaded)

    def record(self, index: int, counts: torch.Tensor) -> None:
        """Keep the counts of batch ``index`` until the next :meth:`sync`."""
        if self.path is not None:
            self.pending[index] = [float(c) for c in counts]

    def sync(self) -> None:
        """Gather every rank's new counts and write the file (rank 0)."""
        if self.path is None:
            return
        for part in distributed.all_gather_objects(self.pending, self.ctx):
            self.done.update(part)
        self.pending = {}
        if self.ctx.is_main:
            payload = {"format": 1, "settings": self.settings,
                       "done": {str(k): v for k, v in sorted(self.done.items())}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(payload))

    def resumed_counts(self, size: int) -> torch.Tensor:
        """The summed counts of the batches finished by an earlier call."""
        total = torch.zeros(size, dtype=torch.float64)
        for counts in self.loaded.values():
            total += torch.tensor(counts, dtype=torch.float64)
        return total


def check_state_path(path: str | os.PathLike[str] | None) -> None:
    """Refuse a ``state_path`` that cannot be a state file: not a path, a directory, or a
    file whose parent folder is a file."""
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"state_path must be a file path or None, got {type(path).__name__}.", argument="state_path"
        )
    p = Path(path)
    if p.is_dir():
        raise InvalidArgumentError(
            f"state_path {str(p)!r} is a directory; pass the path of a JSON file, e.g. "
            f"{str(p / 'robust_state.json')!r}.",
            argument="state_path",
        )
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidArgumentError(
            f"state_path {str(p)!r} cannot be created: {str(parent)!r} is a file, not a folder.",
            argument="state_path",
        )


def checksum(model: nn.Module) -> list[float]:
    """A cheap fingerprint of the weights: parameter count and the sums of |w| and w."""
    with torch.no_grad():
        params = [p.detach().double() for p in model.parameters()]
        return [
            float(sum(p.numel() for p in params)),
            round(float(sum(p.abs().sum() for p in params)), 6),
            round(float(sum(p.sum() for p in params)), 6),
        ]
