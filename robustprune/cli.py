"""The ``robustprune`` console script.

Subcommands::

    robustprune run RECIPE [--set KEY=VALUE ...] [--resume] [--device DEV]
    robustprune analyze (--model NAME | --checkpoint PATH) [--data NAME]
    robustprune prune --checkpoint IN (--eps E | --target-macs F | --ratio R) --out OUT
    robustprune eval --checkpoint PATH [--data NAME] [--eps E]
    robustprune report RUN_DIR
    robustprune list models|datasets

Exit codes: 0 success, 1 a robustprune error (one line on stderr; ``--debug`` shows the
traceback), 2 a usage error (bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustprune import __version__
from robustprune.errors import InvalidArgumentError, RecipeError, RobustPruneError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("robustprune")

_EPILOG_RUN = """\
examples:
  robustprune run recipes/digits-cnn.toml
  robustprune run recipes/digits-cnn.toml --set seeds=[0] --set prune.eps=[0.02,0.05]
  robustprune run recipes/cifar10-resnet18.toml --set data.name=synthetic --set train.epochs=1
  robustprune run recipes/digits-cnn.toml --resume          # continue the latest run
  torchrun --nproc_per_node=4 -m robustprune.cli run recipes/cifar10-resnet18.toml

--set KEY=VALUE takes a dotted key and a TOML value; inside [[prune]] entries the next part
is an index (prune.0.eps), a label (prune.fixed.ratio) or a key set on every entry that has
it (prune.eps). Strings may be written bare: --set data.name=synthetic.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustprune",
        description="Robustness-aware structured pruning: prune, finetune and measure clean and "
        "AutoPGD accuracy against fixed-ratio baselines at matched MACs.",
    )
    parser.add_argument("--version", action="version", version=f"robustprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # ---------------------------------------------------------------- run
    p = sub.add_parser(
        "run",
        help="run a recipe: train, prune, finetune, evaluate, write runs/<name>/<timestamp>/",
        description="Run a TOML recipe: train (or load) the dense model once per seed, then for "
        "every pruning method and setting prune a copy, finetune it and evaluate it (clean, "
        "AutoPGD, MACs, params, latency). Writes config.toml, results.jsonl, summary.md, "
        "pareto.png and checkpoints to <output>/<name>/<timestamp>/ and prints the summary.",
        epilog=_EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", metavar="RECIPE", help="a recipe file, e.g. recipes/digits-cnn.toml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value (repeatable), e.g. --set train.epochs=3",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue the latest run of this recipe (or --run-dir): finished rows are kept, "
        "unfinished training resumes from its last epoch checkpoint",
    )
    p.add_argument("--run-dir", metavar="DIR", help="write to (or resume) this directory instead of a new timestamped one")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dry-run", action="store_true", help="validate the recipe, print the resolved config and the plan, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_threads(p)
    p.set_defaults(func=_cmd_run)

    # ---------------------------------------------------------------- analyze
    p = sub.add_parser(
        "analyze",
        help="print the compressibility / operator-norm / Lipschitz analysis of a model",
        description="Per-layer compressibility (ε, k, β), structure factor and scale, operator "
        "norms, alignment, Lipschitz and gap bounds and the dominant-direction audit of a "
        "checkpoint or of a freshly created (random-weight) registered model.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME", help="a registered model (random weights), see `robustprune list models`")
    src.add_argument("--checkpoint", metavar="PATH", help="a checkpoint written by save_pruned / `robustprune run`")
    p.add_argument("--data", metavar="NAME", help="dataset for the input shape and a data batch (default: the checkpoint's, else digits)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="dataset option, e.g. size=16 (repeatable)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", help="model option for --model, e.g. widths=[16,32] (repeatable)")
    p.add_argument("--eps", type=float, default=0.05, help="ε for the compressibility k (default 0.05)")
    p.add_argument("--delta", type=_budget, default=None, help="attack budget δ for the gap bounds, certified fraction and audit, e.g. 0.1 or 8/255 (default: 8/255 for ℓ∞, 0.5 for ℓ2)")
    p.add_argument("--norms", nargs="+", choices=["2", "inf"], default=["2", "inf"], help="operator norms (default: 2 inf)")
    p.add_argument("--conv-norm", choices=["matricized", "operator"], default="matricized")
    p.add_argument("--n-examples", type=int, default=256, help="test examples for data-mode alignment and the audit (0: none)")
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    _add_threads(p)
    p.set_defaults(func=_cmd_analyze)

    # ---------------------------------------------------------------- prune
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint structurally and save the smaller model",
        description="Load a checkpoint, prune it (ε-targeted by default) and save the pruned "
        "model; prints the per-group pruning report.",
    )
    p.add_argument("--checkpoint", required=True, metavar="IN", help="input checkpoint")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--eps", type=float, help="ε: keep per group the fewest channels whose relative residual is <= ε")
    how.add_argument("--target-macs", type=float, metavar="F", help="keep this fraction of the MACs (solves the global ε or ratio)")
    how.add_argument("--ratio", type=float, help="channel fraction to remove (fixed / global)")
    p.add_argument("--method", choices=["epsilon", "fixed", "global", "spectral"], default="epsilon")
    p.add_argument("--round-to", type=int, default=None, help="round kept channels up to a multiple of this")
    p.add_argument("--out", required=True, metavar="OUT", help="output checkpoint path")
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    _add_threads(p)
    p.set_defaults(func=_cmd_prune)

    # ---------------------------------------------------------------- eval
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: clean and AutoPGD accuracy, MACs, params, latency",
        description="Clean accuracy, AutoAttack robust accuracy (when --eps is given), MACs, "
        "params and latency of a checkpoint on a dataset's test split.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--data", metavar="NAME", help="dataset (default: the one recorded in the checkpoint)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="dataset option, e.g. size=16 (repeatable)")
    p.add_argument("--norm", choices=["Linf", "L2"], default="Linf")
    p.add_argument("--eps", type=_budget, default=None, help="attack budget, e.g. 0.1 or 8/255 (default: clean only)")
    p.add_argument("--attacks", nargs="+", default=["apgd-ce", "apgd-t"], help="AutoAttack attacks, or 'standard'")
    p.add_argument("--n-examples", type=int, default=None, help="evaluate the first N test examples")
    p.add_argument("--n-iter", type=int, default=100, help="APGD iterations (default 100)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["text", "json"], default="text")
    _add_threads(p)
    p.set_defaults(func=_cmd_eval)

    # ---------------------------------------------------------------- report
    p = sub.add_parser(
        "report",
        help="re-render summary.md and pareto.png of a run directory",
        description="Re-render summary.md and pareto.png from a run's results.jsonl and print the summary.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="runs/<name>/<timestamp>")
    p.set_defaults(func=_cmd_report)

    # ---------------------------------------------------------------- list
    p = sub.add_parser("list", help="list registered models or datasets", description="List registered models or datasets.")
    p.add_argument("what", choices=["models", "datasets"])
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'resnet*'")
    p.set_defaults(func=_cmd_list)
    return parser


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
            import torch

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


# =========================================================================== commands


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from robustprune.models import list_models

        names = list_models(args.pattern)
    else:
        from robustprune.data import list_datasets

        names = list_datasets(args.pattern)
    print("\n".join(names))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from robustprune.recipe import describe_plan, load_recipe, run_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        print(recipe.to_toml())
        print(describe_plan(recipe))
        return 0
    result = run_recipe(
        recipe,
        run_dir=args.run_dir,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
    )
    if result.is_main:
        print(result.summary)
        print(f"Wrote {result.run_dir}/ (config.toml, results.jsonl, summary.md, pareto.png, checkpoints/)")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    import torch

    from robustprune.analysis import analyze

    if args.checkpoint:
        model, meta = _load_checkpoint(args.checkpoint)
        data_name, data_opts = _data_choice(args, meta)
    else:
        from robustprune.models import create_model

        data_name, data_opts = _data_choice(args, {})
        info = _dataset_info(data_name, data_opts)
        model_opts = _options(args.model_option, "--model-option")
        model = create_model(
            args.model, num_classes=info.num_classes, input_shape=info.input_shape,
            mean=info.mean, std=info.std, **model_opts,
        )
    batch = None
    if args.n_examples and args.n_examples > 0:
        batch = _test_batch(data_name, data_opts, args.n_examples)
        example_inputs = batch[0][:1]
    else:
        info = _dataset_info(data_name, data_opts)
        example_inputs = torch.rand(1, *info.input_shape)
    report = analyze(
        model.eval(),
        example_inputs=example_inputs,
        data=batch,
        norms=tuple(args.norms),
        conv_norm=args.conv_norm,
        eps=args.eps,
        delta=args.delta,
        max_samples=max(1, args.n_examples),
    )
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2, default=str))
    elif args.format == "markdown":
        print(report.to_markdown())
    else:
        print(report)
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from robustprune.checkpoint import save_pruned
    from robustprune.pruners import prune

    model, meta = _load_checkpoint(args.checkpoint)
    kwargs: dict[str, Any] = {"method": args.method}
    if args.eps is not None:
        kwargs["eps"] = args.eps
    if args.target_macs is not None:
        kwargs["target_macs"] = args.target_macs
    if args.ratio is not None:
        if args.method not in ("fixed", "global"):
            raise InvalidArgumentError("--ratio applies to --method fixed or global; use --eps or --target-macs.")
        kwargs["ratio"] = args.ratio
    if args.round_to is not None:
        kwargs["round_to"] = args.round_to
    example_inputs = _example_inputs(model)
    if example_inputs is not None:
        kwargs["example_inputs"] = example_inputs
    with torch.enable_grad():
        report = prune(model, **kwargs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new_meta = {**meta, "pruned_from": str(args.checkpoint), "prune_report": report.to_dict()}
    save_pruned(model, out, meta=new_meta)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2, default=str))
    elif args.format == "markdown":
        print(report.to_markdown())
    else:
        print(report)
    print(f"Saved {out}", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from robustprune.evaluate import evaluate

    model, meta = _load_checkpoint(args.checkpoint)
    data_name, data_opts = _data_choice(args, meta)
    loaders = _loaders(data_name, data_opts, args.batch_size)
    attacks: Any = args.attacks[0] if args.attacks == ["standard"] else tuple(args.attacks)
    result = evaluate(
        model,
        loaders.test,
        norm=args.norm,
        eps=args.eps,
        attacks=attacks,
        n_examples=args.n_examples,
        latency=not args.no_latency,
        device=args.device,
        seed=args.seed,
        n_iter=args.n_iter,
        batch_size=args.batch_size,
    )
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(result)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from robustprune.report import render_report

    text = render_report(args.run_dir)
    print(text)
    print(f"Wrote {Path(args.run_dir) / 'summary.md'} and {Path(args.run_dir) / 'pareto.png'}", file=sys.stderr)
    return 0


# =========================================================================== helpers


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads for PyTorch (default: PyTorch's choice); small models on a busy "
        "machine run fastest with --threads 1",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer")
    return value


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


def _budget(text: str) -> float:
    """``0.1`` or ``8/255``."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number or a fraction such as 8/255") from None


def _options(items: Sequence[str], flag: str) -> dict[str, Any]:
    from robustprune.recipe import parse_override

    out: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except RecipeError as exc:
            raise InvalidArgumentError(f"{flag} {item}: {str(exc).split(': ', 1)[-1]}") from None
        out[key] = value
    return out


def _load_checkpoint(path: str) -> tuple[Any, dict[str, Any]]:
    from robustprune.checkpoint import load_pruned

    if not Path(path).is_file():
        raise InvalidArgumentError(f"Checkpoint '{path}' does not exist.")
    model = load_pruned(path, map_location="cpu")
    meta = dict(getattr(model, "robustprune_meta", None) or {})
    return model, meta


def _data_choice(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    opts = _options(args.data_option, "--data-option")
    if args.data:
        return args.data, opts
    recorded = meta.get("data")
    if isinstance(recorded, dict) and recorded.get("name"):
        return str(recorded["name"]), {**dict(recorded.get("options", {})), **opts}
    if args.command == "eval":
        raise InvalidArgumentError(
            "This checkpoint does not record its dataset; pass --data NAME (see `robustprune list datasets`)."
        )
    return "digits", opts


def _dataset_info(name: str, options: dict[str, Any]) -> Any:
    from robustprune.data import dataset_info

    return dataset_info(name, **options)


def _loaders(name: str, options: dict[str, Any], batch_size: int) -> Any:
    from robustprune.data import create_loaders

    return create_loaders(name, batch_size=batch_size, **options)


def _test_batch(name: str, options: dict[str, Any], n: int) -> tuple[Any, Any]:
    import torch

    loaders = _loaders(name, options, batch_size=min(n, 256))
    xs, ys, total = [], [], 0
    for x, y in loaders.test:
        xs.append(x)
        ys.append(y)
        total += len(y)
        if total >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _example_inputs(model: Any) -> Any:
    import torch

    from robustprune.models import model_spec

    spec = model_spec(model)
    if spec is not None and spec.input_shape:
        return torch.rand(1, *spec.input_shape)
    return None


if __name__ == "__main__":
    sys.exit(main())
