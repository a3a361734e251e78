"""The subcommands of ``robustprune``: each takes the parsed arguments, prints its result
and returns the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from robustprune import distributed
from robustprune._inputs import resolve_example_inputs
from robustprune.analysis import DEFAULT_DELTA, analyze
from robustprune.checkpoint import save_pruned
from robustprune.cli.model_source import model_from_args, options
from robustprune.data import DatasetInfo, Loaders, create_loaders, dataset_info, list_datasets
from robustprune.errors import InvalidArgumentError
from robustprune.export import FORMATS, export
from robustprune.models import list_models
from robustprune.models.passthrough import PREFIXES
from robustprune.pruners import PRUNERS, prune
from robustprune.recipe import check_run, describe_plan, load_recipe, run_recipe
from robustprune.recipe.checks import check_budget, method_settings
from robustprune.recipe.measure import evaluate
from robustprune.recipe.preflight import data_errors, data_mismatch
from robustprune.recipe.rundir import output_problem
from robustprune.report import render_report

__all__ = ["cmd_list", "cmd_run", "cmd_analyze", "cmd_prune", "cmd_eval", "cmd_export", "cmd_report", "launcher_rank"]


def launcher_rank() -> int:
    """This process's rank under ``torchrun`` (its ``RANK``), 0 outside it."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``robustprune list models|datasets [PATTERN]``."""
    names = list_models(args.pattern) if args.what == "models" else list_datasets(args.pattern)
    print("\n".join(names))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``robustprune run RECIPE``: the summary of the run (or, with --dry-run, the plan)."""
    overrides = list(args.overrides)
    if getattr(args, "weights", None):
        overrides.append(f"model.weights={json.dumps(str(args.weights))}")
    recipe = load_recipe(args.recipe, overrides)
    if args.dry_run:  # the checks of a real run, writing and downloading nothing
        out = check_run(recipe, run_dir=args.run_dir, resume=args.resume, device=args.device, **_executor(args))
        if launcher_rank() == 0:
            print(recipe.to_toml())
            print(describe_plan(recipe))
            print(f"A run would write {out}/", file=sys.stderr)
        return 0
    result = run_recipe(
        recipe,
        run_dir=args.run_dir,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        **_executor(args),
    )
    if result.is_main:
        print(result.summary)
        print(f"Wrote {result.run_dir}/ (config.toml, results.jsonl, summary.md, pareto.png, checkpoints/)")
    return 0


def _executor(args: argparse.Namespace) -> dict[str, Any]:
    """``run``'s executor options as keywords of run_recipe / check_run."""
    return {"executor": args.executor, "jobs": args.jobs, "ray_address": args.ray_address}


def cmd_analyze(args: argparse.Namespace) -> int:
    """``robustprune analyze``: the analysis report of a checkpoint or a model; δ defaults to
    the dataset's usual budget (:attr:`~robustprune.data.DatasetInfo.eps`)."""
    info = None
    if args.model and _uses_data(args):
        info = _dataset_info(args, {})
    model, meta = model_from_args(args, info)
    if args.checkpoint and (args.data or isinstance(meta.get("data"), dict)):
        info = _dataset_info(args, meta)
    batch = None
    if args.n_examples > 0 and (args.checkpoint or info is not None):
        batch = _test_batch(_open_data(args, meta, min(args.n_examples, 256), model), args.n_examples)
    delta: Any = args.delta
    if delta is None and info is not None:
        delta = {**DEFAULT_DELTA, "inf": info.eps}
    report = analyze(
        model.eval(),
        example_inputs=resolve_example_inputs(model, data_example=batch[0] if batch else None),
        data=batch,
        norms=tuple(args.norms),
        conv_norm=args.conv_norm,
        eps=args.eps,
        delta=delta,
        max_samples=max(1, args.n_examples),
        device=args.device,
        progress=not args.no_progress,
    )
    _print_report(report, args.format)
    return 0


def _uses_data(args: argparse.Namespace) -> bool:
    """Whether ``analyze --model`` takes a dataset: ``--data`` given, or a registered model
    without ``--input-shape``/``--num-classes`` (digits, as before); a timm/torchvision model
    or an explicit shape is analyzed data-free."""
    if args.data or args.data_option:
        return True
    return not (args.input_shape or args.num_classes or args.model.startswith(PREFIXES))


def cmd_prune(args: argparse.Namespace) -> int:
    """``robustprune prune``: prune a checkpoint and save the smaller model."""
    problem = output_problem(args.out, directory=False)
    if problem:
        raise InvalidArgumentError(f"--out {args.out}: cannot write the pruned checkpoint there: {problem}.")
    _check_finetune_flags(args)
    model, meta = model_from_args(args, _dataset_info(args, {}) if args.model and args.data else None)
    if args.device is not None:
        model.to(distributed.resolve_device(args.device))
    kwargs: dict[str, Any] = {"method": args.method}
    if args.eps is not None:
        kwargs["eps"] = args.eps
    if args.target_macs is not None:
        kwargs["target_macs"] = args.target_macs
    if args.ratio is not None:
        if "ratio" not in method_settings(args.method):
            takers = [m for m in PRUNERS if "ratio" in method_settings(m)]
            raise InvalidArgumentError(
                f"--ratio applies to --method {' or '.join(takers)}; use --eps or --target-macs."
            )
        kwargs["ratio"] = args.ratio
    if args.round_to is not None:
        kwargs["round_to"] = args.round_to
    if args.schedule == "iterative" or args.finetune_epochs > 0:
        report, fit_dict = _prune_and_finetune(model, meta, args, kwargs)
    else:
        with torch.enable_grad():
            report = prune(model, progress=not args.no_progress, **kwargs)  # example inputs inferred from the model
        fit_dict = None
    out = Path(args.out)
    source = args.checkpoint or args.weights or args.model
    new_meta = {**meta, "pruned_from": str(source), "prune_report": report.to_dict()}
    if fit_dict is not None:
        new_meta["fit"] = fit_dict
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_pruned(model.cpu(), out, meta=new_meta)
    except OSError as exc:  # e.g. the disk filled up; the checks above found the path writable
        raise InvalidArgumentError(f"--out {out}: cannot write the pruned checkpoint ({exc.strerror or exc}).") from exc
    _print_report(report, args.format)
    print(f"Saved {out}", file=sys.stderr)
    return 0


def _prune_and_finetune(model: Any, meta: dict[str, Any], args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    """``prune --schedule iterative`` / ``--finetune-epochs``: prune (in steps) and finetune
    on the data, optionally adversarially and with distillation from the unpruned model."""
    import copy

    from robustprune.attacks import AdversarialConfig
    from robustprune.pruners.schedules import Schedule, ScheduledPruning
    from robustprune.train import DistillConfig, FitConfig, fit

    epochs = int(args.finetune_epochs)
    adversarial = None if args.adv_eps is None else AdversarialConfig(kind="pgd", eps=args.adv_eps, steps=args.adv_steps)
    lr = args.lr if args.lr is not None else float(meta.get("train_lr", 0.01))
    if args.lr is None:
        print(f"finetune lr {lr:g} ({'the dense training lr' if 'train_lr' in meta else 'default'}; --lr to change)", file=sys.stderr)
    cfg = FitConfig(epochs=epochs, lr=lr, adversarial=adversarial)  # checked before any work
    if args.schedule == "iterative" and "target_macs" not in kwargs:
        raise InvalidArgumentError("--schedule iterative drives the pruner to a MACs target: give --target-macs.")
    if args.schedule == "iterative" and epochs < 1:
        raise InvalidArgumentError("--schedule iterative finetunes between its steps: give --finetune-epochs >= 1.")
    loaders = _open_data(args, meta, args.batch_size, model)
    distill = None if args.distill is None else DistillConfig(teacher=copy.deepcopy(model), weight=args.distill)
    pruning = None
    if args.schedule == "iterative":
        options = {k: v for k, v in kwargs.items() if k not in ("method", "target_macs")}
        pruning = ScheduledPruning(target_macs=kwargs["target_macs"], method=kwargs["method"], options=options,
                                   schedule=Schedule(kind="iterative", steps=args.steps, restart=args.restart))
    else:
        with torch.enable_grad():
            report = prune(model, progress=not args.no_progress, **kwargs)
    if distill is not None:
        distill.teacher.to(distributed.resolve_device(args.device or "auto"))
    result = fit(model, loaders, cfg, device=args.device or "auto", pruning=pruning, distill=distill)
    if pruning is not None:
        from robustprune.recipe.build import combined_report

        return _Report(combined_report(result.pruning)), result.to_dict()
    return report, result.to_dict()


class _Report:
    """A combined report of several pruning steps, printed like a PruningReport."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def __str__(self) -> str:
        steps = ", ".join(f"{s['macs_kept']:.1%}" for s in self.data.get("steps", []))
        return (f"{self.data['method']} pruning in {len(self.data.get('steps', []))} steps (MACs kept per step: {steps}); "
                f"MACs kept {self.data['macs_kept']:.1%} of the original, params {self.data['params_kept']:.1%}")

    def to_markdown(self) -> str:
        return str(self)


def cmd_eval(args: argparse.Namespace) -> int:
    """``robustprune eval``: clean and robust accuracy, MACs, params and latency."""
    if args.eps is not None:
        check_budget("--eps", args.eps, args.norm)
    if args.model and not args.data:
        raise InvalidArgumentError("eval --model needs the data to evaluate on: pass --data NAME (see `robustprune list datasets`).")
    model, meta = model_from_args(args, _dataset_info(args, {}) if args.model else None)
    loaders = _open_data(args, meta, args.batch_size, model)
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


def cmd_export(args: argparse.Namespace) -> int:
    """``robustprune export``: write the model in a deployment format and check the file."""
    model, _ = model_from_args(args)
    out = Path(args.out) if args.out else _export_path(args)
    result = export(model, out, format=args.format, atol=args.atol)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0


def _export_path(args: argparse.Namespace) -> Path:
    """``p.pt`` -> ``p.onnx`` / ``p.pt2`` / ``p.torchscript.pt``; ``--model timm:x`` -> ``timm-x.onnx``."""
    source = Path(args.checkpoint) if args.checkpoint else Path(args.model.replace(":", "-").replace("/", "-"))
    suffix = FORMATS[args.format]
    target = source.with_suffix(suffix) if args.checkpoint else source.with_name(source.name + suffix)
    return source.with_suffix(".torchscript" + suffix) if target == source else target


def cmd_report(args: argparse.Namespace) -> int:
    """``robustprune report RUN_DIR``: re-render and print the summary."""
    text = render_report(args.run_dir)
    print(text)
    print(f"Wrote {Path(args.run_dir) / 'summary.md'} and {Path(args.run_dir) / 'pareto.png'}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- helpers


def _print_report(report: Any, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(report.to_dict(), indent=2, default=str))
    elif fmt == "markdown":
        print(report.to_markdown())
    else:
        print(report)


def _check_finetune_flags(args: argparse.Namespace) -> None:
    """``prune``'s finetune options are refused where they would be ignored."""
    finetuning = args.schedule == "iterative" or args.finetune_epochs > 0
    shaping = bool(args.model)  # --data also sets a --model's input shape and classes
    unused = [flag for flag, given in (("--adv-eps", args.adv_eps is not None), ("--distill", args.distill is not None),
                                       ("--data", bool(args.data) and not shaping),
                                       ("--data-option", bool(args.data_option) and not shaping))
              if given and not finetuning]
    if unused:
        raise InvalidArgumentError(f"{', '.join(unused)}: only used by a finetune; give --finetune-epochs >= 1.")
    if args.restart and args.schedule != "iterative":
        raise InvalidArgumentError("--restart restarts the learning rate after each pruning step: use it with --schedule iterative.")


def _dataset_info(args: argparse.Namespace, meta: dict[str, Any]) -> DatasetInfo:
    """The static facts of the command's dataset (``--data``, the checkpoint's, else digits)."""
    name, opts = _data_choice(args, meta)
    with data_errors(name, opts.get("root"), opts):
        return dataset_info(name, **opts)


def _data_choice(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    opts = options(args.data_option, "--data-option")
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


def _open_data(args: argparse.Namespace, meta: dict[str, Any], batch_size: int, model: Any) -> Loaders:
    """The loaders of ``--data`` (or the checkpoint's dataset), checked against ``model``."""
    name, options = _data_choice(args, meta)
    with data_errors(name, options.get("root"), options):
        loaders = create_loaders(name, batch_size=batch_size, **options)
    mismatch = data_mismatch(model, loaders.info)
    if mismatch:
        what = f"Checkpoint '{args.checkpoint}'" if getattr(args, "checkpoint", None) else f"Model '{args.model}'"
        raise InvalidArgumentError(
            f"{what} {mismatch}; pass the --data (and --data-option) it was trained on."
        )
    return loaders


def _test_batch(loaders: Loaders, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys, total = [], [], 0
    for x, y in loaders.test:
        xs.append(x)
        ys.append(y)
        total += len(y)
        if total >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]
