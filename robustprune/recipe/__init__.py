"""Recipes: TOML files that describe a whole experiment, and the runner that executes them.

A recipe names the data, the model, how the dense model is trained (or which checkpoint it
starts from), which pruning methods and settings to compare, how each pruned model is
finetuned and how every model is evaluated::

    name = "digits-cnn"
    seeds = [0, 1]

    [data]
    name = "digits"            # extra keys are dataset options (size = 16, ...)

    [model]
    name = "cnn-small"         # extra keys are model options (widths = [16, 32, 64], ...)

    [train]                    # or [checkpoint] path = "dense.pt"
    epochs = 20
    adversarial = { kind = "pgd", eps = 0.1, steps = 5 }

    [[prune]]
    method = "epsilon"
    eps = [0.1, 0.2]

    [[prune]]
    method = "fixed"
    match = "epsilon"          # solved to the MACs each epsilon-pruned model reached

    [finetune]
    epochs = 5

    [eval]
    norm = "Linf"
    eps = 0.1
    attacks = ["apgd-ce", "apgd-t"]

:func:`load_recipe` reads and validates a file into frozen dataclasses; every unknown key
or bad value raises :class:`~robustprune.errors.RecipeError` naming the key, the file and
the allowed values. ``overrides`` (the command line's ``--set key=value``) are applied to
the parsed TOML before validation, values written as TOML literals
(``prune.eps=[0.02,0.05]``, ``data.name=synthetic``). :func:`run_recipe` executes a recipe
and writes ``runs/<name>/<timestamp>/`` (see its docstring).

The package: ``config`` (the dataclasses, validated in their constructors), ``checks``
(allowed values from the library's registries), ``schema`` (TOML -> dataclasses),
``parse`` (files, overrides, sweep variants), ``serialize`` (dataclasses -> TOML),
``plan`` (the job graph), ``rundir`` (the run directory), ``preflight``, ``measure``
(evaluation and analysis columns) and ``runner``.
"""

from __future__ import annotations

from robustprune.attacks import AdversarialConfig
from robustprune.recipe.config import (
    AnalysisConfig,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    PruneConfig,
    Recipe,
    RegularizerSpec,
    SweepAxis,
    TrainConfig,
)
from robustprune.recipe.parse import (
    apply_override,
    load_recipe,
    parse_override,
    parse_recipe,
    variants,
)
from robustprune.recipe.plan import Job, describe_plan, plan_jobs
from robustprune.recipe.runner import RunResult, check_run, run_recipe
from robustprune.recipe.serialize import to_toml
from robustprune.train import FitConfig

#: the recipe's former name of :class:`robustprune.attacks.AdversarialConfig`
AdversarialSpec = AdversarialConfig

__all__ = [
    "AdversarialConfig",
    "AdversarialSpec",
    "RegularizerSpec",
    "DataConfig",
    "ModelConfig",
    "FitConfig",
    "TrainConfig",
    "FinetuneConfig",
    "PruneConfig",
    "EvalConfig",
    "AnalysisConfig",
    "SweepAxis",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "parse_override",
    "apply_override",
    "variants",
    "to_toml",
    "Job",
    "plan_jobs",
    "describe_plan",
    "run_recipe",
    "check_run",
    "RunResult",
]
