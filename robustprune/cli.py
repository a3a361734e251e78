"""The ``robustprune`` console script."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from robustprune import __version__
from robustprune.errors import RobustPruneError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustprune",
        description="Robustness-aware structured pruning: prune, finetune and measure clean and "
        "AutoPGD accuracy against fixed-ratio baselines at matched MACs.",
    )
    parser.add_argument("--version", action="version", version=f"robustprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_list = sub.add_parser("list", help="list registered models or datasets")
    p_list.add_argument("what", choices=["models", "datasets"])
    p_list.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'resnet*'")
    p_list.set_defaults(func=_cmd_list)
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from robustprune.models import list_models

        names = list_models(args.pattern)
    else:
        from robustprune.data import list_datasets

        names = list_datasets(args.pattern)
    print("\n".join(names))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on a robustprune error, 2 on a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RobustPruneError as exc:
        if args.debug:
            raise
        print(f"robustprune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("robustprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
