"""Exceptions raised by robustprune.

Every user mistake surfaces as a :class:`RobustPruneError` (or a subclass) whose message
says what was wrong and what to do about it, never as a raw traceback from deep inside
torch or torch-pruning.
"""

from __future__ import annotations

__all__ = [
    "RobustPruneError",
    "InvalidArgumentError",
    "UnknownNameError",
    "DatasetNotFoundError",
    "ModelNotSupportedError",
    "PruningError",
    "RecipeError",
    "TrainingDivergedError",
]


class RobustPruneError(Exception):
    """Base class of every error robustprune raises on purpose."""


class InvalidArgumentError(RobustPruneError, ValueError):
    """An argument has a value outside its allowed range or of the wrong kind.

    ``argument`` names the offending argument (or config field) when the raiser knows it,
    so that callers such as the recipe parser can point at the key that holds it.
    """

    def __init__(self, message: str = "", *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class UnknownNameError(RobustPruneError, KeyError):
    """A registry lookup (model, dataset, method, attack) found no such name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(RobustPruneError, FileNotFoundError):
    """A dataset's files are missing under the given root."""


class ModelNotSupportedError(RobustPruneError):
    """A model (or one of its layers) cannot be handled by the requested operation."""


class PruningError(RobustPruneError):
    """Structural pruning could not be planned or applied; the model was left unchanged."""


class RecipeError(RobustPruneError):
    """A recipe file has an unknown key or a bad value."""


class TrainingDivergedError(RobustPruneError):
    """The training loss became NaN or infinite."""
