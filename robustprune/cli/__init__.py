"""The ``robustprune`` console script.

Subcommands::

    robustprune run RECIPE [--set KEY=VALUE ...] [--resume] [--device DEV]
    robustprune analyze (--model NAME | --checkpoint PATH) [--data NAME]
    robustprune prune --checkpoint IN (--eps E | --target-macs F | --ratio R) --out OUT
    robustprune eval --checkpoint PATH [--data NAME] [--eps E]
    robustprune report RUN_DIR
    robustprune list models|datasets

Exit codes: 0 success, 1 a robustprune error (one line on stderr; ``--debug`` shows the
traceback), 2 a usage error (bad arguments). ``python -m robustprune.cli`` runs the same.
The package: ``parser`` (the command line), ``commands`` (one function per subcommand).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence

import torch

from robustprune.cli.parser import build_parser
from robustprune.errors import RobustPruneError

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on a robustprune error, 2 on a usage error."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    _configure_logging(args.debug)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except RobustPruneError as exc:
        if args.debug:
            raise
        print(f"robustprune: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("robustprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: still one line unless --debug
        if args.debug:
            raise
        print(
            f"robustprune: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


def _configure_logging(debug: bool) -> None:
    root = logging.getLogger("robustprune")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun: rank 0 tells the story
        root.setLevel(logging.WARNING)
    # AutoAttack's sanity checks warn once per attacked batch; say each distinct thing once
    aa = logging.getLogger("auto-attack")
    if not debug and not any(isinstance(f, _OnceFilter) for f in aa.filters):
        aa.addFilter(_OnceFilter())


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
