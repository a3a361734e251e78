"""Building a pruned model of a recipe job, by its schedule:

- ``one-shot``: prune a copy of the dense model to the setting, then finetune it;
- ``iterative``: finetune a copy of the dense model with the pruning steps inside
  (``fit(..., pruning=...)``);
- ``during-training``: train from the dense model's initialization with the pruning steps
  inside the dense training (resuming from the dense run's checkpoint at the first step,
  which gives the same model as training from scratch), then finetune.

The finetune is the entry's (``[finetune]`` with the entry's own fields), with the entry's
regularizers and, when it asks for it, distillation from the same seed's dense model. The
model is saved with the pruning report (for scheduled entries: the steps combined, relative
to the original model) and the fit results.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from robustprune import distributed
from robustprune.checkpoint import save_pruned
from robustprune.errors import RobustPruneError
from robustprune.models import load_weights
from robustprune.pruners import prune
from robustprune.pruners.importance import make_importance
from robustprune.pruners.schedules import Schedule, ScheduledPruning
from robustprune.recipe.checks import DATA_METHODS
from robustprune.recipe.config import FinetuneConfig, Recipe
from robustprune.recipe.parse import entry_finetune
from robustprune.recipe.plan import Job

if TYPE_CHECKING:
    from robustprune.data import Loaders
    from robustprune.recipe.jobs import JobRunner

__all__ = ["pruned_model", "scheduled", "runtime_options", "combined_report", "start_weights"]

logger = logging.getLogger(__name__)


def pruned_model(
    runner: JobRunner, job: Job, r: Recipe, loaders: Loaders, dense: Any, example: Any,
    params: dict[str, float], timing: dict[str, float],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Build, finetune and save the model of ``job``; its report and fit dicts."""
    assert job.entry is not None
    ft, path = entry_finetune(r, job.entry), runner.checkpoint_path(job)
    teacher = copy.deepcopy(dense) if ft.distill is not None else None  # before dense is pruned
    t0 = time.perf_counter()
    fit_dicts: dict[str, Any] = {}
    kind = job.entry.kind
    options = runtime_options(job, r, loaders)
    if kind == "one-shot":
        model = dense
        report = _one_shot(model, job, example, params, options)
    elif kind == "iterative":
        model = dense
        report = None
    else:
        model = runner.init_model(r, loaders, job.seed)
        result = _during_training(runner, job, r, loaders, model, scheduled(job, example, params, options))
        report = combined_report(result.pruning)
        fit_dicts["train"] = _fit_dict(result)
    timing["train" if kind == "during-training" else "prune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if kind == "iterative" or ft.epochs > 0:
        pruning = scheduled(job, example, params, options) if kind == "iterative" else None
        result = _finetune(runner, job, loaders, model, ft, dense_teacher=teacher, pruning=pruning)
        if pruning is not None:
            report = combined_report(result.pruning)
        fit_dicts["finetune"] = _fit_dict(result)
    timing["finetune"] = time.perf_counter() - t0
    fit_dict = fit_dicts.get("finetune") if set(fit_dicts) <= {"finetune"} else fit_dicts
    assert report is not None
    if runner.ctx.is_main:
        save_pruned(model.cpu(), path, meta=runner.meta(r, job, prune_report=report, fit=fit_dict))
    distributed.barrier(runner.ctx)
    return report, fit_dict


def start_weights(model: Any, r: Recipe) -> Any:
    """The dense model's start: ``[model] weights`` loaded into ``model`` when given (the
    dense model itself with ``[train] epochs = 0``, the start of its training otherwise)."""
    if r.model is not None and r.model.weights is not None:
        logger.info("dense model: starting from the weights in %s", r.model.weights)
        load_weights(model, r.model.weights)
    return model


def scheduled(job: Job, example: Any, params: dict[str, float], options: dict[str, Any]) -> ScheduledPruning:
    """The :class:`ScheduledPruning` of a scheduled entry's job (its target: the setting,
    or the MACs of the matched model)."""
    assert job.entry is not None
    entry = job.entry
    return ScheduledPruning(
        target_macs=float(params["target_macs"]), method=entry.method,
        schedule=entry.schedule or Schedule(), options=options, example_inputs=example,
    )


def runtime_options(job: Job, r: Recipe, loaders: Loaders) -> dict[str, Any]:
    """The pruner's keyword arguments: the entry's options, its importance (``adv-taylor``
    measures on the first training batches, in order, with the finetune's attack) and, for
    the data-measuring methods (``sensitivity``), the held-out data (``[data] validation``,
    else the training data) and the attack."""
    assert job.entry is not None
    entry = job.entry
    options = entry.pruner_options()
    ft = entry_finetune(r, entry)
    adversarial = ft.adversarial or (r.train.adversarial if r.train is not None else None)
    in_order = DataLoader(loaders.train.dataset, batch_size=loaders.train.batch_size, shuffle=False)
    if entry.importance is not None:
        options["importance"] = make_importance(entry.importance, data=in_order, adversarial=adversarial)
    if entry.method in DATA_METHODS:
        if loaders.val is None:
            logger.info("%s: no [data] validation split; %s measures on training examples", job.id, entry.method)
        options.update(data=loaders.val if loaders.val is not None else in_order, adversarial=adversarial)
    return options


def combined_report(pruning: dict[str, Any] | None) -> dict[str, Any]:
    """The report of a scheduled pruning: the last step's per-group rows, with MACs and
    params before = the original model's, so that ``macs_kept`` is relative to it."""
    if pruning is None or not pruning["reports"]:
        raise RobustPruneError("the schedule ran no pruning step; check its target_macs.")
    first, last = pruning["reports"][0], pruning["reports"][-1]
    out = dict(last)
    out.update(
        macs_before=first["macs_before"], params_before=first["params_before"],
        macs_kept=last["macs_after"] / first["macs_before"] if first["macs_before"] else 1.0,
        params_kept=last["params_after"] / first["params_before"] if first["params_before"] else 1.0,
        seconds=sum(r.get("seconds", 0.0) for r in pruning["reports"]),
        schedule={k: pruning[k] for k in ("schedule", "epochs_at", "targets")},
        steps=[{k: r[k] for k in ("macs_before", "macs_after", "macs_kept", "setting")} for r in pruning["reports"]],
    )
    return out


def _one_shot(model: Any, job: Job, example: Any, params: dict[str, float], options: dict[str, Any]) -> dict[str, Any]:
    assert job.entry is not None
    with torch.enable_grad():
        try:
            report = prune(model, method=job.entry.method, example_inputs=example, **params, **options)
        except RobustPruneError as exc:
            raise type(exc)(f"{job.id}: {exc}") from exc
    out = report.to_dict()
    out.setdefault("macs_kept", report.macs_kept)
    out.setdefault("params_kept", report.params_kept)
    return out


def _during_training(
    runner: JobRunner, job: Job, r: Recipe, loaders: Loaders, model: Any, pruning: ScheduledPruning,
) -> Any:
    """Train from initialization with the pruning steps inside the dense training,
    starting from the dense run's snapshot at the first step when there is one."""
    assert r.train is not None and job.entry is not None
    first = pruning.schedule.epochs(r.train.epochs)[0]
    snapshot = runner.snapshot(job, first) if first > 0 else None
    path = runner.checkpoint_path(job)
    ckpt_dir = path.with_name(path.stem + ".train")
    result = runner.fit(
        model, loaders, r.train, (), seed=job.seed, ckpt_dir=ckpt_dir, pruning=pruning,
        resume_from=snapshot if snapshot is not None and snapshot.is_file() else None,
    )
    runner.cleanup(ckpt_dir)
    return result


def _finetune(
    runner: JobRunner, job: Job, loaders: Loaders, model: Any, ft: FinetuneConfig, *,
    dense_teacher: Any, pruning: ScheduledPruning | None,
) -> Any:
    assert job.entry is not None
    path = runner.checkpoint_path(job)
    ckpt_dir = path.with_name(path.stem + ".finetune")
    distill = None
    if ft.distill is not None:
        distill = ft.distill.build(dense_teacher.to(distributed.resolve_device(runner.device)))
    result = runner.fit(model, loaders, ft, job.entry.regularizers, seed=job.seed, ckpt_dir=ckpt_dir,
                        pruning=pruning, distill=distill)
    runner.cleanup(ckpt_dir)
    return result


def _fit_dict(result: Any) -> dict[str, Any]:
    out = result.to_dict()
    out.pop("checkpoint", None)  # removed once the model is saved
    return out
