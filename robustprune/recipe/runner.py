"""Running a recipe: per job, the dense model (trained once per variant and seed, or a
checkpoint), pruning, finetuning, evaluation and analysis; one results row per job."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustprune import distributed
from robustprune._inputs import check_bool
from robustprune._progress import line as progress_line
from robustprune._threads import REQUESTED, resolve_threads, use_threads
from robustprune.errors import InvalidArgumentError
from robustprune.recipe.config import Recipe
from robustprune.recipe.execute import JobTask, execute_job
from robustprune.recipe.executors import (
    ExecutorSpec,
    JobsFailedError,
    ProcessBackend,
    executor_spec,
    run_parallel,
)
from robustprune.recipe.executors_ray import RayBackend
from robustprune.recipe.jobs import JobRunner
from robustprune.recipe.parse import variants
from robustprune.recipe.plan import Job, plan_jobs
from robustprune.recipe.preflight import preflight
from robustprune.recipe.rundir import RunDir, resolve_run_dir

__all__ = ["RunResult", "run_recipe", "check_run"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_recipe` produced: the run directory, every row of
    ``results.jsonl`` and the summary markdown. ``is_main`` is False on the non-zero ranks
    of a ``torchrun`` job (they write nothing)."""

    run_dir: Path
    rows: tuple[dict[str, Any], ...]
    summary: str
    is_main: bool = True


def run_recipe(
    recipe: Recipe,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    threads: int | None = None,
    executor: str = "local",
    jobs: int | None = None,
    ray_address: str | None = None,
) -> RunResult:
    """Run a recipe and write its results.

    Per variant (``[sweep]`` combination) and seed: train the dense model (or load
    ``[checkpoint]``), evaluate it; then for every ``[[prune]]`` entry and setting prune a
    copy (``match`` entries: solved with ``target_macs`` = the MACs fraction the matched
    model reached), finetune it, evaluate it (clean, AutoAttack, MACs, params, latency).
    Every model is evaluated as reloaded from its saved checkpoint, so an interrupted run
    continued with ``resume=True`` gives the same numbers as an uninterrupted one.

    Writes ``<output>/<name>/<YYYYmmdd-HHMMSS>/`` (or ``run_dir``): ``config.toml`` (the
    resolved recipe), ``results.jsonl`` (one row per model, appended as each finishes),
    ``summary.md`` and ``pareto.png`` (see :mod:`robustprune.report`), ``checkpoints/``
    (``save_pruned`` files) and ``analysis/`` (when ``[analysis]`` asks for it).

    Args:
        recipe: a validated recipe (:func:`~robustprune.recipe.load_recipe`).
        run_dir: the directory to write; default a new timestamped one.
        resume: continue ``run_dir`` or, without it, the latest run of this recipe: rows in
            ``results.jsonl`` are kept, unfinished training resumes from its epoch
            checkpoint. The resolved recipe must equal the run's ``config.toml``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        progress: tqdm bars for training and attacks on a terminal; elsewhere (a log file)
            one line per epoch and per job (:mod:`robustprune._progress`).
        threads: CPU threads for PyTorch; default the CLI's ``--threads``, else the recipe's
            ``threads``, else :func:`robustprune._threads.default_threads`. Set once, here,
            and recorded in every row (``threads``).

        executor: ``"local"`` (the jobs one after another in this process), ``"processes"``
            (``jobs`` worker processes, CUDA devices round-robin) or ``"ray"`` (one Ray task
            per job; ``ray_address`` a cluster, default a local Ray): see
            :mod:`robustprune.recipe.executors`. Every executor writes the same rows.

    With ``[log] kind = "csv"`` / ``"tensorboard"`` each job's epochs and final row are
    logged under ``<run dir>/log/`` (:mod:`robustprune.recipe.logsection`).

    Under ``torchrun`` every rank runs the same plan (training and attacks are shared
    between the ranks); rank 0 alone writes files. ``torchrun`` and the parallel executors
    exclude each other.
    """
    if not isinstance(recipe, Recipe):
        raise InvalidArgumentError(
            f"run_recipe needs a Recipe (load_recipe(path) or parse_recipe(dict)), got {type(recipe).__name__}.",
            argument="recipe")
    check_bool("resume", resume)
    check_bool("progress", progress)
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise InvalidArgumentError(f"run_dir must be a folder path or None, got {type(run_dir).__name__}.",
                                   argument="run_dir")
    n_threads = resolve_threads(threads, REQUESTED.get(), recipe.threads)  # checked before anything runs
    spec = executor_spec(executor, jobs, ray_address)
    dev = distributed.resolve_device(device)
    ctx = distributed.setup(dev)
    if spec.name != "local" and ctx.distributed:
        raise InvalidArgumentError(
            f"--executor {spec.name} runs whole jobs in parallel and cannot run under torchrun; use one "
            "or the other (torchrun for one large job, --executor for many jobs).", argument="executor")
    jobs = plan_jobs(recipe)
    by_name = dict(variants(recipe))
    preflight(by_name.values())  # every check before the first file is written
    out = resolve_run_dir(recipe, run_dir, resume, ctx)
    state = RunDir(out, ctx.is_main)
    state.prepare(recipe, resume)
    distributed.barrier(ctx)
    done = {row["id"]: row for row in state.read_rows()} if resume else {}
    use_threads(n_threads)
    talk = progress and ctx.is_main
    if done:
        progress_line(logger, "resuming %s: %d of %d models already finished", out, len(done), len(jobs),
                      enabled=talk)
    else:
        progress_line(logger, "run %s: %d models, %d CPU thread(s)", out, len(jobs), n_threads, enabled=talk)
    started = time.perf_counter()
    if spec.name == "local":
        finished = _run_local(jobs, done, JobRunner(by_name, state, device=dev, ctx=ctx, progress=progress),
                              recipe, n_threads, talk)
    else:
        backend, task_device = _backend(spec, device, dev, recipe)

        def make_task(job: Job, rows: dict[str, dict[str, Any]]) -> JobTask:
            return JobTask(recipe, str(out), job.id, rows, device=task_device, threads=n_threads)

        try:
            finished = run_parallel(jobs, done, state, backend, make_task, talk=talk)
        except JobsFailedError:
            if state.read_rows():
                state.render()  # the summary of the rows that finished
            raise
    distributed.barrier(ctx)
    rows = tuple(state.read_rows())
    summary = state.render()
    progress_line(logger, "finished %d models in %.1f s", finished, time.perf_counter() - started, enabled=talk)
    return RunResult(out, rows, summary, ctx.is_main)


def _run_local(
    jobs: list[Job], done: dict[str, dict[str, Any]], runner: JobRunner, recipe: Recipe, n_threads: int, talk: bool,
) -> int:
    """The jobs one after another in this process (``--executor local``); returns how many ran."""
    state, finished = runner.state, 0
    for i, job in enumerate(jobs):
        if job.id in done:
            runner.skip(job, done[job.id])
            continue
        row = execute_job(runner, job, recipe.log, state.dir, n_threads, runner.ctx.is_main)
        state.append_row(row)
        finished += 1
        progress_line(logger, "[%d/%d] %s", i + 1, len(jobs), _row_line(row), enabled=talk)
        if i + 1 < len(jobs) and jobs[i + 1].seed != job.seed:
            state.render()  # a partial summary after every seed
    return finished


def _backend(spec: ExecutorSpec, requested: str, dev: Any, recipe: Recipe) -> tuple[Any, str]:
    """The backend of a parallel executor and the device its tasks use; a Ray task asks for
    ``gpus_per_job`` GPUs (default 1 when this run's device is CUDA, else 0) and then uses
    the one Ray gives it (``cuda``: Ray sets ``CUDA_VISIBLE_DEVICES``)."""
    if spec.name == "processes":
        return ProcessBackend(spec.jobs, str(requested)), str(dev)
    gpus = recipe.gpus_per_job if recipe.gpus_per_job is not None else (1.0 if dev.type == "cuda" else 0.0)
    return RayBackend(spec.ray_address, spec.jobs, gpus), "cuda" if gpus > 0 else "cpu"


def check_run(
    recipe: Recipe,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "auto",
    executor: str = "local",
    jobs: int | None = None,
    ray_address: str | None = None,
) -> Path:
    """Every check :func:`run_recipe` makes before it writes a file (the device, the plan,
    :func:`~robustprune.recipe.preflight.preflight`: data, model options, checkpoint; the run
    directory and, with ``resume``, its ``config.toml``), writing and downloading nothing:
    what ``robustprune run --dry-run`` runs; the executor options are checked too (Ray
    installed, its address reachable). Returns the directory a run would write."""
    executor_spec(executor, jobs, ray_address)
    distributed.resolve_device(device)
    plan_jobs(recipe)
    preflight(dict(variants(recipe)).values(), fetch=False)
    out = resolve_run_dir(recipe, run_dir, resume, distributed.DistContext())
    RunDir(out, False).check(recipe, resume)
    return out


def _row_line(row: dict[str, Any]) -> str:
    robust = row.get("robust_accuracy")
    return (
        f"{row['id']}: MACs {row['macs_kept']:.1%}, params {row['params_kept']:.1%}, "
        f"clean {row['clean_accuracy']:.1%}"
        + (f", robust {robust:.1%}" if robust is not None else "")
        + f" ({row.get('seconds', 0):.1f} s)"
    )
