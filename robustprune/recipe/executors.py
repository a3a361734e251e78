"""Executors of a run's jobs: ``local`` (one after another in this process, the default),
``processes`` (``--jobs N`` worker processes on this machine, CUDA devices round-robin) and
``ray`` (one Ray task per job, :mod:`robustprune.recipe.executors_ray`).

The parallel executors share one driver (:func:`run_parallel`): a job is submitted once
the jobs it depends on (:func:`~robustprune.recipe.execute.dependencies`) have rows; the
driver alone writes ``results.jsonl``, in plan order, so the file ends as a sequential
run's. A failed job is reported with its id, the jobs that need it are not run, the others
go on; the run then raises :class:`JobsFailedError` listing them."""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from robustprune._progress import line as progress_line
from robustprune.errors import InvalidArgumentError, RobustPruneError
from robustprune.recipe.execute import JobTask, TaskResult, dependencies, run_task, worker_init
from robustprune.recipe.plan import Job
from robustprune.recipe.rundir import RunDir, json_default

__all__ = ["EXECUTORS", "ExecutorSpec", "JobsFailedError", "executor_spec", "run_parallel"]

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "processes", "ray")


class JobsFailedError(RobustPruneError):
    """Some jobs of a run failed (``failures``: job id -> why); the others finished and
    their rows are in ``results.jsonl``."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = failures


@dataclass(frozen=True)
class ExecutorSpec:
    """A checked choice of executor: ``name``, ``jobs`` (concurrent jobs; None: the
    executor's default) and ``ray_address`` (None: a local Ray)."""

    name: str = "local"
    jobs: int | None = None
    ray_address: str | None = None


def executor_spec(name: str = "local", jobs: int | None = None, ray_address: str | None = None) -> ExecutorSpec:
    """Check the executor options (nothing is started): an unknown executor, ``jobs`` < 1,
    ``jobs`` with ``local`` and ``ray_address`` without ``ray`` are refused with
    :class:`~robustprune.errors.InvalidArgumentError`; for ``ray``, Ray must be installed
    and the address reachable (:func:`~robustprune.recipe.executors_ray.check_ray`)."""
    if name not in EXECUTORS:
        raise InvalidArgumentError(
            f"--executor {name!r}: unknown executor; choose one of {', '.join(EXECUTORS)}.", argument="executor")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise InvalidArgumentError(
            f"--jobs {jobs!r}: the number of concurrent jobs must be an integer >= 1 (e.g. --jobs 2).",
            argument="jobs")
    if jobs is not None and name == "local":
        raise InvalidArgumentError(
            "--jobs needs --executor processes or --executor ray (local runs one job at a time).",
            argument="jobs")
    if ray_address is not None and name != "ray":
        raise InvalidArgumentError(
            f"--ray-address needs --executor ray (the executor is {name!r}).", argument="ray_address")
    if name == "ray":
        from robustprune.recipe.executors_ray import check_ray

        check_ray(ray_address)
    return ExecutorSpec(name, jobs, ray_address)


class Backend(Protocol):
    """Where the tasks run: :meth:`submit` one, :meth:`results` yields finished ones."""

    def submit(self, task: JobTask) -> None: ...

    def results(self) -> Iterator[TaskResult]: ...

    def close(self) -> None: ...


class ProcessBackend:
    """``jobs`` spawned worker processes; on CUDA, worker k gets device k mod #devices.

    A worker that dies (killed, out of memory) breaks the whole pool, and every job then in
    flight with it: the pool is rebuilt and those jobs start again (a job restarts from the
    start; its finished dependencies are not rerun). A job that is in flight when the pool
    breaks a second time is reported as failed, so a job that kills its worker cannot loop."""

    def __init__(self, jobs: int | None, device: str) -> None:
        self.context = multiprocessing.get_context("spawn")
        n_gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
        self.jobs = jobs or n_gpus or 2
        self.n_gpus = n_gpus
        self.pool = self._pool()
        self.futures: dict[cf.Future[TaskResult], JobTask] = {}
        self.restarted: set[str] = set()

    def _pool(self) -> cf.ProcessPoolExecutor:
        devices = None
        if self.n_gpus:  # "auto" / "cuda": round-robin; "cuda:N" and "cpu": every worker the same
            devices = self.context.Queue()
            for k in range(self.jobs):
                devices.put(f"cuda:{k % self.n_gpus}")
        return cf.ProcessPoolExecutor(self.jobs, mp_context=self.context, initializer=worker_init,
                                      initargs=(devices,))

    def submit(self, task: JobTask) -> None:
        self.futures[self.pool.submit(run_task, task)] = task

    def results(self) -> Iterator[TaskResult]:
        done, _ = cf.wait(list(self.futures), return_when=cf.FIRST_COMPLETED)
        broken = []
        for future in done:
            task = self.futures.pop(future)
            try:
                yield future.result()
            except cf.process.BrokenProcessPool:
                broken.append(task)
            except Exception as exc:  # noqa: BLE001 (reported with the job's id; the others go on)
                yield TaskResult(task.job_id, error=f"the worker process failed: {type(exc).__name__}: {exc}")
        if broken:
            yield from self._restart(broken)

    def _restart(self, broken: list[JobTask]) -> Iterator[TaskResult]:
        """A worker died: a new pool, the jobs that were in flight submitted again (once)."""
        for future, task in self.futures.items():  # the pool's other futures fail the same way
            if future.done() and future.exception() is None:
                yield future.result()  # finished just before the break
            else:
                broken.append(task)
        self.futures.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._pool()
        for task in broken:
            if task.job_id in self.restarted:
                yield TaskResult(task.job_id, error="its worker process died twice (killed, or out of memory?)")
            else:
                logger.warning("a worker process died; job %s starts again", task.job_id)
                self.restarted.add(task.job_id)
                self.submit(task)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class OrderedWriter:
    """Appends rows to ``results.jsonl`` in plan order as they become available (a failed
    job is passed over); :meth:`finish` rewrites the file in plan order when a resumed run
    left it in another."""

    def __init__(self, state: RunDir, jobs: list[Job], done: dict[str, dict[str, Any]]) -> None:
        self.state, self.jobs, self.written = state, jobs, set(done)
        self.next = 0

    def advance(self, rows: dict[str, dict[str, Any]], failed: dict[str, str]) -> None:
        while self.next < len(self.jobs):
            job = self.jobs[self.next]
            if job.id in rows and job.id not in self.written:
                self.state.append_row(rows[job.id])
                self.written.add(job.id)
            elif job.id not in failed and job.id not in rows:
                return
            self.next += 1
            if self.next < len(self.jobs) and self.jobs[self.next].seed != job.seed and self.written:
                self.state.render()  # a partial summary after every seed

    def finish(self) -> None:
        rows = self.state.read_rows()
        if not rows:
            return
        order = {job.id: i for i, job in enumerate(self.jobs)}
        ranked = sorted(rows, key=lambda r: order.get(r["id"], len(order)))
        if [r["id"] for r in ranked] != [r["id"] for r in rows]:
            text = "".join(json.dumps(r, default=json_default, ensure_ascii=False) + "\n" for r in ranked)
            self.state.write(self.state.results.name, text)


def run_parallel(
    jobs: list[Job], done: dict[str, dict[str, Any]], state: RunDir, backend: Backend,
    make_task: Callable[[Job, dict[str, dict[str, Any]]], JobTask], *, talk: bool = True,
) -> int:
    """Run the jobs not in ``done`` on ``backend``, each once its dependencies have rows;
    write every row through one :class:`OrderedWriter`. Returns the number of jobs run;
    raises :class:`JobsFailedError` at the end when some failed."""
    rows, failed = dict(done), {}
    pending = [job for job in jobs if job.id not in done]
    writer, running, finished = OrderedWriter(state, jobs, done), 0, 0
    try:
        while pending or running:
            for job in list(pending):
                needs = dependencies(job)
                blocker = next((d for d in needs if d in failed), None)
                if blocker is not None:
                    failed[job.id] = f"not run: it needs {blocker}, which failed"
                    pending.remove(job)
                elif all(d in rows for d in needs):
                    backend.submit(make_task(job, {d: rows[d] for d in needs}))
                    pending.remove(job)
                    running += 1
            if not running:
                break
            for result in backend.results():
                running -= 1
                if result.error is None:
                    assert result.row is not None
                    rows[result.job_id] = result.row
                    finished += 1
                    progress_line(logger, "[%d/%d] %s done (%.1f s)", len(rows), len(jobs), result.job_id,
                                  result.row.get("seconds", 0), enabled=talk)
                else:
                    failed[result.job_id] = result.error
                    logger.error("job %s failed: %s\n%s", result.job_id, result.error, result.details)
            writer.advance(rows, failed)
    finally:
        backend.close()
    writer.advance(rows, failed)
    writer.finish()
    if failed:
        lines = "\n".join(f"  {job_id}: {why}" for job_id, why in failed.items())
        raise JobsFailedError(
            f"{len(failed)} of {len(jobs)} jobs failed (the other rows are in {state.results}); fix the "
            f"cause and continue with --resume:\n{lines}", failed)
    return finished

