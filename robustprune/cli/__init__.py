"""The ``robustprune`` console script.

Subcommands::

    robustprune run RECIPE [--set KEY=VALUE ...] [--resume] [--device DEV] [--weights PATH]
    robustprune analyze (--model NAME | --checkpoint PATH) [--data NAME] [--input-shape C,H,W]
    robustprune prune (--checkpoint IN | --model NAME [--weights W]) (--eps E | --target-macs F | --ratio R) --out OUT
    robustprune eval (--checkpoint PATH | --model NAME [--weights W]) [--data NAME] [--eps E]
    robustprune export (CHECKPOINT | --model NAME [--weights W]) [--format onnx|torchscript|exported-program]
    robustprune report RUN_DIR
    robustprune list models|datasets

Exit codes: 0 success, 1 a robustprune error (one line on stderr; ``--debug`` shows the
traceback), 2 a usage error (bad arguments). ``python -m robustprune.cli`` runs the same.
Under ``torchrun`` only rank 0 prints a robustprune error; the other ranks exit 1 silently.
The package: ``parser`` (the command line), ``arguments`` (the types of its numeric
options), ``model_source`` (``--checkpoint`` / ``--model`` and its options), ``commands``
(one function per subcommand).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Sequence

from robustprune._threads import REQUESTED, use_threads
from robustprune.cli.commands import launcher_rank
from robustprune.cli.parser import build_parser
from robustprune.errors import RobustPruneError
from robustprune.recipe.preflight import NETWORK_ERRORS

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on a robustprune error, 2 on a usage error.

    Under ``torchrun`` only rank 0 prints usage and robustprune errors (every rank meets the
    same one); the other ranks exit with the same code silently. An internal error (a bug)
    is printed by every rank that meets it, tagged with the rank."""
    parser = build_parser()
    rank = launcher_rank()
    try:
        with contextlib.redirect_stderr(io.StringIO()) if rank else contextlib.nullcontext():
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    _configure_logging(args.debug)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    requested = REQUESTED.set(getattr(args, "threads", None))
    try:
        use_threads(REQUESTED.get())  # --threads, else the default rule (robustprune._threads)
        return int(args.func(args) or 0)
    except RobustPruneError as exc:
        if args.debug:
            raise
        _error(_one_line(exc), rank)
        return 1
    except NETWORK_ERRORS as exc:  # a download outside the data loaders (e.g. pretrained weights)
        if args.debug:
            raise
        _error(f"a download failed ({_one_line(exc)}); check the network connection, or place the "
               "files where robustprune looks for them.", rank)
        return 1
    except KeyboardInterrupt:
        print("robustprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: still one line unless --debug
        if args.debug:
            raise
        where = f" (rank {rank})" if rank else ""
        print(
            f"robustprune: internal error{where}: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        REQUESTED.reset(requested)


def _error(text: str, rank: int) -> None:
    if rank == 0:
        print(f"robustprune: error: {text}", file=sys.stderr)


def _configure_logging(debug: bool) -> None:
    root = logging.getLogger("robustprune")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))  # short lines: the progress of a run
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if launcher_rank():  # torchrun: rank 0 tells the story
        root.setLevel(logging.WARNING)
    # AutoAttack's sanity checks warn once per attacked batch; say each distinct thing once
    aa = logging.getLogger("auto-attack")
    if not debug and not any(isinstance(f, _OnceFilter) for f in aa.filters):
        aa.addFilter(_OnceFilter())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """INFO and above of the ``robustprune`` logger (epochs, jobs, resumes) to whatever
    ``sys.stderr`` is when the record is made (a redirected or captured stderr included)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _OnceFilter(logging.Filter):
    """Lets each distinct message (numbers aside) through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = re.sub(r"\d+", "#", record.getMessage())
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
