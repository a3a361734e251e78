"""Progress that reads well on a terminal and in a log file: the one helper that fit, the
attacks, the recipe runner (and the pruners and the analysis) show their progress with.

- On a terminal (stderr is a TTY) or in a Jupyter kernel, :func:`bar` is a tqdm bar.
- Anywhere else (stderr piped to a file, a CI log) :func:`bar` shows nothing: no ``\\r``
  redraws. The story is told one line per epoch or job instead, by :func:`line`: an INFO
  record of the caller's logger, also written to stderr when logging is not configured
  (the CLI configures the ``robustprune`` logger, so its lines come once, through it).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["interactive", "bar", "line", "NoBar"]


def interactive(stream: Any = None) -> bool:
    """Whether progress bars can redraw: ``stream`` (default stderr) is a TTY, or this is a
    Jupyter kernel (tqdm draws a widget there)."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel")


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar (``tqdm.auto``; ``kwargs`` are tqdm's: ``total``, ``desc``, ``unit``,
    ``leave``...) when ``enabled`` and :func:`interactive`, else a :class:`NoBar` with the
    same methods that shows nothing."""
    if enabled and interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return NoBar(iterable)


def line(logger: logging.Logger, message: str, *args: Any, enabled: bool = True) -> None:
    """One line of progress (``message % args``): logged at INFO by ``logger`` and, when
    ``enabled`` and nothing handles the record (logging not configured), written to stderr
    (through tqdm when bars are showing, so that they stay intact)."""
    logger.info(message, *args)
    if not enabled or _handled(logger):
        return
    text = message % args if args else message
    if interactive():
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


class NoBar:
    """A progress bar that shows nothing: tqdm's methods as no-ops, iterating ``iterable``."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.n += 1

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _handled(logger: logging.Logger) -> bool:
    """Whether an INFO record of ``logger`` reaches a handler (not logging's last resort)."""
    if not logger.isEnabledFor(logging.INFO):
        return logger.hasHandlers()  # configured, and INFO switched off on purpose
    current: logging.Logger | None = logger
    while current is not None:
        if any(h.level <= logging.INFO for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent  # type: ignore[assignment]
    return False
