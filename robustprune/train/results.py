"""What :func:`robustprune.train.fit` reports: per-epoch statistics and the run's result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from robustprune.attacks import AdversarialConfig

__all__ = ["EpochStats", "FitResult"]


@dataclass(frozen=True)
class EpochStats:
    """One epoch of :func:`fit` (``epoch`` counts from 1).

    ``loss`` is the mean total loss (task loss + regularizers) over the epoch's examples,
    ``regularization`` the mean regularizer part and ``regularization_terms`` its terms
    (regularizer name -> mean value, weights applied); ``train_accuracy`` is measured on the
    inputs trained on (adversarial ones under adversarial training, clean ones for
    TRADES); ``test_accuracy`` is clean accuracy on the test loader (None without one).
    """

    epoch: int
    loss: float
    regularization: float
    train_accuracy: float
    test_accuracy: float | None
    lr: float
    seconds: float
    regularization_terms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did: the per-epoch history and the final accuracies; ``pruning``
    (schedule, epochs, targets and every step's report) and ``distill`` (its settings) when
    the fit pruned or distilled."""

    history: tuple[EpochStats, ...]
    final_train_accuracy: float | None
    final_test_accuracy: float | None
    epochs: int
    resumed_from_epoch: int
    checkpoint: str | None
    device: str
    amp: str
    world_size: int
    adversarial: AdversarialConfig | None
    pruning: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field."""
        return {
            "history": [h.to_dict() for h in self.history],
            "final_train_accuracy": self.final_train_accuracy,
            "final_test_accuracy": self.final_test_accuracy,
            "epochs": self.epochs,
            "resumed_from_epoch": self.resumed_from_epoch,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "amp": self.amp,
            "world_size": self.world_size,
            "adversarial": None if self.adversarial is None else dataclasses.asdict(self.adversarial),
            **({} if self.pruning is None else {"pruning": self.pruning}),
            **({} if self.distill is None else {"distill": self.distill}),
        }

