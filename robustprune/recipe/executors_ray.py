"""``--executor ray``: one Ray task per job. ``ray.init()`` starts a local Ray (``--jobs N``:
N CPUs for it) unless ``--ray-address`` names a cluster; every task asks for one CPU and
``gpus_per_job`` GPUs (the recipe's top-level key; default 1 when the run's device is
CUDA, else 0). Ray is the optional extra ``pip install 'robustprune[ray]'``.

A task whose worker dies (killed, out of memory, a lost node) runs again, once, as with the
``processes`` executor; a second death reports the job as failed, so a job that kills its
worker cannot loop."""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from robustprune.errors import InvalidArgumentError
from robustprune.recipe.execute import JobTask, TaskResult, run_task

__all__ = ["check_ray", "RayBackend"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 3.0


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise InvalidArgumentError(
            "--executor ray needs Ray, which is not installed: pip install 'robustprune[ray]' "
            "(or use --executor processes --jobs N on this machine).", argument="executor") from None


def check_ray(address: str | None) -> None:
    """Ray is importable and ``address`` (``host:port`` or ``ray://host:port``; ``auto``
    is left to Ray) accepts a connection; else an InvalidArgumentError naming the fix."""
    _import_ray()
    if address is None or address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise InvalidArgumentError(
            f"--ray-address {address!r}: give HOST:PORT (e.g. 10.0.0.1:6379, or ray://10.0.0.1:10001 "
            "for Ray Client), or 'auto' for the cluster on this machine.", argument="ray_address")
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InvalidArgumentError(
            f"--ray-address {address!r}: no Ray cluster answers there ({exc.strerror or exc}); start one "
            "with `ray start --head` on that machine, check the address, or leave out --ray-address "
            "to run Ray on this machine.", argument="ray_address") from None


class RayBackend:
    """Tasks on Ray: a local Ray started here (and shut down by :meth:`close`) or a cluster.

    Ray's own retries are off (``max_retries=0``): a task that fails is resubmitted here, once,
    with a warning naming the job. ``run_task`` returns a job's own errors as a result, so a
    failed task always means its worker died."""

    def __init__(self, address: str | None, jobs: int | None, num_gpus: float) -> None:
        self.ray = _import_ray()
        self.started = not self.ray.is_initialized()
        if self.started:
            try:
                if address is None:
                    self.ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
                else:
                    self.ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address!r}" if address else "a local Ray"
                raise InvalidArgumentError(
                    f"--executor ray: could not start or reach {where} ({exc}); check --ray-address, "
                    "or use --executor processes.", argument="ray_address") from None
        self.remote = self.ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=0)(run_task)
        self.refs: dict[Any, JobTask] = {}
        self.restarted: set[str] = set()

    def submit(self, task: JobTask) -> None:
        self.refs[self.remote.remote(task)] = task

    def results(self) -> Iterator[TaskResult]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        for ref in ready:
            task = self.refs.pop(ref)
            try:
                yield self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 (the task's worker died: killed, out of memory)
                if task.job_id in self.restarted:
                    yield TaskResult(task.job_id, error=f"its Ray worker died twice ({type(exc).__name__}: {exc})")
                else:
                    logger.warning("a Ray worker died (%s); job %s starts again", type(exc).__name__, task.job_id)
                    self.restarted.add(task.job_id)
                    self.submit(task)

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started:
            self.ray.shutdown()
