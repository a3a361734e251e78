"""One job of a run, executed: in the runner's own loop (:func:`execute_job`, sharing one
:class:`~robustprune.recipe.jobs.JobRunner`) or in a worker process or Ray task
(:func:`run_task`, a fresh runner that knows only the rows the job depends on), and the
dependencies of a job in the plan (:func:`dependencies`)."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustprune import distributed
from robustprune._threads import use_threads
from robustprune.recipe.config import Recipe
from robustprune.recipe.jobs import JobRunner
from robustprune.recipe.logsection import LogConfig, job_loggers
from robustprune.recipe.parse import variants
from robustprune.recipe.plan import Job, plan_jobs
from robustprune.recipe.rundir import RunDir, slug

__all__ = ["JobTask", "TaskResult", "dependencies", "execute_job", "run_task", "worker_init"]

#: the device of this worker process (set by :func:`worker_init`; None: the task's own)
_WORKER_DEVICE: list[str] = []


def dependencies(job: Job) -> tuple[str, ...]:
    """The ids of the jobs whose rows and checkpoints ``job`` needs: its (variant, seed)'s
    dense model (every pruned and scratch model starts from it or is compared with it) and
    the job it is matched to (``match``: its MACs; scratch: its widths and cost)."""
    if job.label == "dense":
        return ()
    dense = job.id.rsplit("/", 2)[0] + "/dense"
    return (dense,) if job.match is None or job.match == dense else (dense, job.match)


def execute_job(runner: JobRunner, job: Job, log: LogConfig, out: Path, threads: int, is_main: bool = True) -> dict[str, Any]:
    """Run ``job`` with ``runner``: its row, with ``seconds`` and ``threads``; the job's
    ``[log]`` loggers (main process only) get its epochs and row."""
    t0 = time.perf_counter()
    loggers = job_loggers(log, out / "log", slug(job.id.replace("/", "__"))) if is_main else ()
    runner.loggers = loggers
    try:
        row = runner.run_job(job)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["threads"] = threads
        for logger in loggers:
            logger.log_result(row)
    finally:
        for logger in loggers:
            logger.close()
        runner.loggers = ()
    runner.rows[job.id] = row
    return row


@dataclass(frozen=True)
class JobTask:
    """What a worker needs to run one job: the recipe, the run directory (checkpoints are
    read and written there, by path), the job's id and the rows of its dependencies."""

    recipe: Recipe
    run_dir: str
    job_id: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1
    progress: bool = False


@dataclass(frozen=True)
class TaskResult:
    """A worker's answer: the row, or the error (its type, message and traceback)."""

    job_id: str
    row: dict[str, Any] | None = None
    error: str | None = None
    details: str = ""


def worker_init(devices: Any) -> None:
    """A worker process's initializer: take the next device from the queue ``devices``
    (CUDA devices round-robin; None: the task's own device)."""
    device = devices.get() if devices is not None else None
    if device is not None:
        _WORKER_DEVICE[:] = [device]


def run_task(task: JobTask) -> TaskResult:
    """Run one job in a fresh process (a worker of ``--executor processes`` or a Ray task):
    the rows of its dependencies are given, their checkpoints are read from the run
    directory. Every exception comes back as a :class:`TaskResult` with ``error`` set."""
    try:
        use_threads(task.threads)
        jobs = {job.id: job for job in plan_jobs(task.recipe)}
        device = distributed.resolve_device(_WORKER_DEVICE[0] if _WORKER_DEVICE else task.device)
        state = RunDir(Path(task.run_dir), True)
        runner = JobRunner(dict(variants(task.recipe)), state, device=device,
                           ctx=distributed.DistContext(), progress=task.progress)
        for job_id, row in task.rows.items():
            runner.skip(jobs[job_id], row)
        row = execute_job(runner, jobs[task.job_id], task.recipe.log, state.dir, task.threads)
        return TaskResult(task.job_id, row=row)
    except Exception as exc:  # reported by the driver with the job's id; the other jobs go on
        return TaskResult(task.job_id, error=f"{type(exc).__name__}: {exc}", details=traceback.format_exc())
