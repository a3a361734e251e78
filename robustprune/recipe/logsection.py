"""``[log]``: where a recipe run logs each job's training curves and final row.

.. code-block:: toml

    [log]
    kind = "csv"          # or "tensorboard" (the [tensorboard] extra), "none" (the default)

Per job, every epoch of its fits (loss, regularization and its terms, accuracies, learning
rate) and its final results row go to ``<run dir>/log/<job>.csv`` (``kind = "csv"``) or to
TensorBoard event files under ``<run dir>/log/<job>/`` (``kind = "tensorboard"``; view with
``tensorboard --logdir <run dir>/log``). The loggers are
:class:`robustprune.train.loggers.CSVLogger` and :class:`~robustprune.train.loggers.TensorBoardLogger`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from robustprune.errors import InvalidArgumentError
from robustprune.recipe.checks import check_choices
from robustprune.train.loggers import LOGGERS, CSVLogger, Logger, TensorBoardLogger

__all__ = ["LOG_KINDS", "LogConfig", "job_loggers"]

#: the values of ``[log] kind``
LOG_KINDS: tuple[str, ...] = ("none", *LOGGERS)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: ``kind`` is one of :data:`LOG_KINDS`; ``"tensorboard"`` is refused when
    the ``tensorboard`` package is missing (when the recipe is read, before anything runs)."""

    kind: str = field(default="none", metadata={"choices": LOG_KINDS})

    def __post_init__(self) -> None:
        check_choices(self)
        if self.kind == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise InvalidArgumentError(
                "kind = \"tensorboard\" needs the tensorboard package: pip install "
                "'robustprune[tensorboard]', or log with kind = \"csv\" (needs nothing).",
                argument="kind",
            )


def job_loggers(config: LogConfig, log_dir: Path, stem: str) -> tuple[Logger, ...]:
    """The loggers of one job whose files are named ``stem``, under ``log_dir``."""
    if config.kind == "csv":
        return (CSVLogger(log_dir / f"{stem}.csv"),)
    if config.kind == "tensorboard":
        return (TensorBoardLogger(log_dir / stem),)
    return ()
