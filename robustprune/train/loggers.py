"""Where the numbers of a fit (and of a recipe's jobs) are logged: ``fit(..., loggers=[...])``.

A :class:`Logger` receives every epoch's :class:`~robustprune.train.results.EpochStats`
(loss, regularization and each regularizer's term, train and test accuracy, learning rate,
seconds) through :meth:`Logger.log_epoch`, and the recipe runner hands each job's final
results row to :meth:`Logger.log_result`. Two are built in:

- :class:`CSVLogger` (always available): one CSV file, one line per epoch and one per
  result (``kind`` says which), the columns the union of what was logged;
- :class:`TensorBoardLogger`: event files for TensorBoard (the optional extra
  ``pip install 'robustprune[tensorboard]'``), tags ``epoch/<name>`` per epoch and
  ``result/<name>`` for a result.

>>> fit(model, loaders, epochs=2, loggers=[CSVLogger("log/fit.csv")])

:data:`LOGGERS` maps the names a recipe's ``[log] kind`` takes to the classes.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from robustprune._io import atomic_write
from robustprune.errors import InvalidArgumentError, RobustPruneError
from robustprune.train.results import EpochStats

__all__ = ["Logger", "CSVLogger", "TensorBoardLogger", "LoggerError", "LOGGERS", "check_loggers", "flat_scalars"]


class LoggerError(RobustPruneError):
    """A logger cannot be used: its optional dependency is missing, or it cannot write."""


@runtime_checkable
class Logger(Protocol):
    """What :func:`~robustprune.train.fit` and the recipe runner log to."""

    def log_epoch(self, stats: EpochStats) -> None:
        """One epoch of a fit."""

    def log_result(self, row: Mapping[str, Any]) -> None:
        """The final results row of a job (nested values are flattened)."""

    def close(self) -> None:
        """Flush and release the files."""


class CSVLogger:
    """One CSV file at ``path`` (its folder is created): a line per epoch and per result, with
    a ``kind`` column (``"epoch"`` / ``"result"``); the header is the union of the columns
    logged so far (the file is rewritten, atomically, when a row brings a new column)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise InvalidArgumentError(f"CSVLogger needs a file path, got {path!r}.", argument="path")
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidArgumentError(f"CSVLogger: {self.path} is a folder; give a file path such as "
                                       f"{self.path / 'fit.csv'}.", argument="path")
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["kind"]

    def log_epoch(self, stats: EpochStats) -> None:
        self._add({"kind": "epoch", **flat_scalars(stats.to_dict())})

    def log_result(self, row: Mapping[str, Any]) -> None:
        self._add({"kind": "result", **flat_scalars(row)})

    def close(self) -> None:
        pass  # every row is on disk as soon as it is logged

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.columns += [k for k in row if k not in self.columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in self.rows)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, buffer.getvalue())
        except OSError as exc:
            raise LoggerError(f"CSVLogger cannot write {self.path}: {exc.strerror or exc}.") from exc


class TensorBoardLogger:
    """TensorBoard event files under ``log_dir`` (``torch.utils.tensorboard``; needs the
    ``[tensorboard]`` extra): scalars ``epoch/<name>`` at step = epoch, and ``result/<name>``
    at step 0 for a result row (its numbers, nested ones as ``a/b``)."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise LoggerError(
                "TensorBoardLogger needs the tensorboard package: pip install 'robustprune[tensorboard]' "
                "(or log with CSVLogger / [log] kind = \"csv\", which needs nothing)."
            )
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, stats: EpochStats) -> None:
        for name, value in flat_scalars(stats.to_dict()).items():
            if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{name}", value, global_step=stats.epoch)
        self.writer.flush()

    def log_result(self, row: Mapping[str, Any]) -> None:
        for name, value in flat_scalars(row).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"result/{name}", value, global_step=0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


#: the names of ``[log] kind`` in a recipe -> the logger class (built with one path)
LOGGERS: dict[str, type] = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def check_loggers(loggers: Any) -> tuple[Logger, ...]:
    """``loggers`` as a tuple, each checked to have ``log_epoch``, ``log_result`` and ``close``."""
    if loggers is None:
        return ()
    items = [loggers] if isinstance(loggers, Logger) else loggers
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise InvalidArgumentError(
            f"loggers must be a list of loggers (e.g. [CSVLogger('fit.csv')]), got {type(loggers).__name__}.",
            argument="loggers",
        )
    for item in items:
        if not isinstance(item, Logger):
            raise InvalidArgumentError(
                f"loggers: {type(item).__name__} is not a logger; a logger has log_epoch(stats), "
                "log_result(row) and close() (robustprune.train.loggers.CSVLogger, TensorBoardLogger).",
                argument="loggers",
            )
    return tuple(items)


def flat_scalars(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The scalar values (numbers, strings, booleans, None) of a nested mapping, keys joined
    with ``/`` (``{"latency_ms": {"batch1": 0.1}}`` -> ``{"latency_ms/batch1": 0.1}``);
    lists are left out."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_scalars(value, f"{name}/"))
        elif value is None or isinstance(value, (int, float, str, bool)):
            out[name] = value
    return out
