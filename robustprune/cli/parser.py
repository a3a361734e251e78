"""The command line of ``robustprune``: one small function per subcommand. The choices
(pruning methods, norms, attacks) come from the library's registries."""

from __future__ import annotations

import argparse
from typing import Any

from robustprune import __version__
from robustprune.attacks import ATTACKS, NORMS
from robustprune.cli.arguments import budget, integer, number
from robustprune.cli.commands import (
    cmd_analyze,
    cmd_eval,
    cmd_export,
    cmd_list,
    cmd_prune,
    cmd_report,
    cmd_run,
)
from robustprune.cli.model_source import add_model_source
from robustprune.export import FORMATS
from robustprune.pruners import PRUNERS
from robustprune.recipe.checks import ANALYSIS_NORMS, CONV_NORMS, method_settings

__all__ = ["build_parser"]

_EPILOG_RUN = """\
examples:
  robustprune run recipes/digits-cnn.toml
  robustprune run recipes/digits-cnn.toml --set seeds=[0] --set prune.eps=[0.02,0.05]
  robustprune run recipes/cifar10-resnet18.toml --set data.name=synthetic --set train.epochs=1
  robustprune run recipes/digits-cnn.toml --resume          # continue the latest run
  torchrun --nproc_per_node=4 -m robustprune.cli run recipes/cifar10-resnet18.toml
  robustprune run recipes/digits-cnn.toml --executor processes --jobs 4   # 4 jobs at once
  robustprune run recipes/cifar10-resnet18.toml --executor ray --ray-address 10.0.0.1:6379

--set KEY=VALUE takes a dotted key and a TOML value; inside [[prune]] entries the next part
is an index (prune.0.eps), a label (prune.fixed.ratio) or a key set on every entry that has
it (prune.eps). Strings may be written bare: --set data.name=synthetic.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``robustprune`` argument parser; each subcommand sets ``func`` to its command."""
    parser = argparse.ArgumentParser(
        prog="robustprune",
        description="Robustness-aware structured pruning: prune, finetune and measure clean and "
        "AutoPGD accuracy against fixed-ratio baselines at matched MACs.",
    )
    parser.add_argument("--version", action="version", version=f"robustprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_run, _add_analyze, _add_prune, _add_eval, _add_export, _add_report, _add_list):
        add(sub)
    return parser


def _add_run(sub: Any) -> None:
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
    p.add_argument("--weights", metavar="PATH", help='start the dense model from these weights (a state_dict or save_pruned file): --set model.weights="PATH"')
    p.add_argument("--dry-run", action="store_true", help="validate the recipe, print the resolved config and the plan, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_threads(p)
    _add_executor(p)
    p.set_defaults(func=cmd_run)


def _add_executor(p: Any) -> None:
    """``run``'s executor options (checked by the library: one clear line for bad input)."""
    g = p.add_argument_group("executor", "where the recipe's jobs run (docs/recipes.md, 'Many jobs: executors')")
    g.add_argument("--executor", default="local", metavar="NAME",
                   help="local (one job after another, default), processes (--jobs N worker processes on "
                   "this machine, CUDA devices round-robin) or ray (one Ray task per job; pip install "
                   "'robustprune[ray]')")
    g.add_argument("--jobs", type=_int_or_text, default=None, metavar="N",
                   help="jobs at once (processes: default the CUDA device count, else 2; ray: the CPUs of a local Ray)")
    g.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="a running Ray cluster (HOST:PORT, ray://HOST:PORT or auto); default: start Ray on this machine")


def _int_or_text(text: str) -> int | str:
    """An integer, or the text as given (refused with a clear line by the library)."""
    try:
        return int(text)
    except ValueError:
        return text


def _add_analyze(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="print the compressibility / operator-norm / Lipschitz analysis of a model",
        description="Per-layer compressibility (ε, k, β), structure factor and scale, operator "
        "norms, alignment, Lipschitz and gap bounds and the dominant-direction audit of a "
        "checkpoint or of a freshly created (random-weight) registered model.",
    )
    add_model_source(p)
    p.add_argument("--data", metavar="NAME", help="dataset for the input shape and a data batch (default: the checkpoint's; for --model "
                   "with --input-shape/--num-classes or a timm:/torchvision: model none, data-free; else digits)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="dataset option, e.g. size=16 (repeatable)")
    p.add_argument("--eps", type=number(0, 1, low_open=True, high_open=True), default=0.05, help="ε for the compressibility k, in (0, 1) (default 0.05)")
    p.add_argument("--delta", type=budget(), default=None, help="attack budget δ for the gap bounds, certified fraction and audit, e.g. 0.1 or 8/255 "
                   "(default: the dataset's usual ℓ∞ budget, digits 0.2, MNIST 0.3, CIFAR/SVHN 8/255; 8/255 without data; 0.5 for ℓ2)")
    p.add_argument("--device", default=None, help="where to measure: cpu, cuda, cuda:N, auto (default: cpu)")
    p.add_argument("--norms", nargs="+", choices=ANALYSIS_NORMS, default=list(ANALYSIS_NORMS), help="operator norms (default: 2 inf)")
    p.add_argument("--conv-norm", choices=CONV_NORMS, default="matricized")
    p.add_argument("--n-examples", type=integer(0), default=256, help="test examples for data-mode alignment and the audit (0: none)")
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    p.add_argument("--no-progress", action="store_true", help="no progress (bars on a terminal, one line per step elsewhere)")
    _add_threads(p)
    p.set_defaults(func=cmd_analyze)


def _add_prune(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint (or --model) structurally and save the smaller model",
        description="Load a checkpoint (or build --model, with --weights), prune it (ε-targeted by default) and save the pruned "
        "model; prints the per-group pruning report.",
    )
    add_model_source(p)
    ratio_methods = " / ".join(m for m in PRUNERS if "ratio" in method_settings(m))
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--eps", type=number(0, 1, low_open=True, high_open=True), help="ε: keep per group the fewest channels whose relative residual is <= ε")
    how.add_argument("--target-macs", type=number(0, 1, low_open=True), metavar="F", help="keep this fraction of the MACs, in (0, 1] (solves the global ε or ratio)")
    how.add_argument("--ratio", type=number(0, 1, high_open=True), help=f"channel fraction to remove, in [0, 1) ({ratio_methods})")
    p.add_argument("--method", choices=list(PRUNERS), default="epsilon")
    p.add_argument("--round-to", type=integer(1), default=None, help="round kept channels up to a multiple of this")
    p.add_argument("--out", required=True, metavar="OUT", help="output checkpoint path")
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    p.add_argument("--no-progress", action="store_true", help="no progress (bars on a terminal, one line per step elsewhere)")
    _add_finetune(p)
    _add_threads(p)
    p.set_defaults(func=cmd_prune)


def _add_finetune(p: argparse.ArgumentParser) -> None:
    """The schedule and finetune options of ``robustprune prune``."""
    g = p.add_argument_group(
        "schedule and finetune",
        "prune iteratively and/or finetune after pruning on --data (a during-training schedule "
        "prunes inside the dense training: use a recipe, see docs/recipes.md)",
    )
    g.add_argument("--schedule", choices=["one-shot", "iterative"], default="one-shot",
                   help="one-shot (default) or iterative: --steps pruning steps inside the finetune, "
                   "geometric in MACs, an equal share of the epochs after each (needs --target-macs)")
    g.add_argument("--steps", type=integer(1), default=3, help="pruning steps of an iterative schedule (default 3)")
    g.add_argument("--restart", action="store_true", help="restart the learning-rate schedule after each step")
    g.add_argument("--finetune-epochs", type=integer(0), default=0, metavar="E", help="finetune epochs after (and, iterative, between) pruning steps (default 0)")
    g.add_argument("--lr", type=number(0, low_open=True), default=None,
                   help="finetune learning rate (default: the dense training's lr recorded in a recipe's "
                   "checkpoint, 'rewinding' it: the best measured finetune; else 0.01)")
    g.add_argument("--data", metavar="NAME", help="finetune dataset (default: the one recorded in the checkpoint); with --model it also sets the model's input shape and classes")
    g.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="dataset option, e.g. size=16 (repeatable)")
    g.add_argument("--batch-size", type=integer(1), default=64)
    g.add_argument("--adv-eps", type=budget(1.0), default=None, help="adversarial finetune budget (PGD, ℓ∞), in (0, 1], e.g. 0.2 or 8/255 (default: a standard finetune)")
    g.add_argument("--adv-steps", type=integer(1), default=5, help="PGD steps of the adversarial finetune (default 5)")
    g.add_argument("--distill", type=number(0, 1), default=None, metavar="W",
                   help="distil from the unpruned checkpoint with weight W in [0, 1] (temperature 2)")
    g.add_argument("--device", default=None, help="where to prune and finetune: cpu, cuda, cuda:N, auto (default: prune on the CPU, finetune on auto)")


def _add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: clean and AutoPGD accuracy, MACs, params, latency",
        description="Clean accuracy, AutoAttack robust accuracy (when --eps is given), MACs, "
        "params and latency of a checkpoint on a dataset's test split.",
    )
    add_model_source(p)
    p.add_argument("--data", metavar="NAME", help="dataset (default: the one recorded in the checkpoint; required with --model)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="dataset option, e.g. size=16 (repeatable)")
    p.add_argument("--norm", choices=NORMS, default="Linf")
    p.add_argument("--eps", type=budget(), default=None, help="attack budget, e.g. 0.1 or 8/255, <= 1 under Linf (default: clean only)")
    p.add_argument("--attacks", nargs="+", default=["apgd-ce", "apgd-t"], help=f"AutoAttack attacks: {', '.join(ATTACKS)}")
    p.add_argument("--n-examples", type=integer(1), default=None, help="evaluate the first N test examples")
    p.add_argument("--n-iter", type=integer(1), default=100, help="APGD iterations (default 100)")
    p.add_argument("--batch-size", type=integer(1), default=256)
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--format", choices=["text", "json"], default="text")
    _add_threads(p)
    p.set_defaults(func=cmd_eval)


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint or a model to ONNX, TorchScript or a torch.export program",
        description="Write the model in a deployment format, load the file back with its runtime "
        "(onnxruntime for ONNX), run it on a fresh batch and print the largest difference from "
        "the PyTorch model's outputs (above --atol the file is removed and the command fails). "
        "ONNX needs pip install 'robustprune[export]'.",
    )
    add_model_source(p, positional=True)
    p.add_argument("--format", choices=list(FORMATS), default="onnx", help="onnx (default), torchscript or exported-program")
    p.add_argument("--out", metavar="PATH", help="the file to write (default: the checkpoint's (or model's) name with the format's suffix)")
    p.add_argument("--atol", type=number(0, low_open=True), default=1e-4, help="largest accepted difference, relative to the largest output (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export)


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="re-render summary.md and pareto.png of a run directory",
        description="Re-render summary.md and pareto.png from a run's results.jsonl and print the summary.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="runs/<name>/<timestamp>")
    p.set_defaults(func=cmd_report)


def _add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="list registered models or datasets", description="List registered models or datasets.")
    p.add_argument("what", choices=["models", "datasets"])
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'resnet*'; 'timm:*' or 'torchvision:resnet*' list those libraries' models")
    p.set_defaults(func=cmd_list)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=integer(1), default=None, metavar="N",
        help="CPU threads for PyTorch (default: half the CPUs this process may use, at most 4; "
        "see benchmarks/results/threads.md)",
    )
