"""``--executor ray``: one Ray task per job. ``ray.init()`` starts a local Ray (``--jobs N``:
N CPUs for it) unless ``--ray-address`` names a cluster; every task asks for one CPU and
``gpus_per_job`` GPUs (the recipe's top-level key; default 1 when the run's device is
CUDA, else 0). Ray is the optional extra ``pip install 'robustprune[ray]'``."""

from __future__ import annotations

import importlib
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from robustprune.errors import InvalidArgumentError
from robustprune.recipe.execute import JobTask, TaskResult, run_task

__all__ = ["check_ray", "RayBackend"]

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
    """Tasks on Ray: a local Ray started here (and shut down by :meth:`close`) or a cluster."""

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
        self.refs: dict[Any, str] = {}

    def submit(self, task: JobTask) -> None:
        self.refs[self.remote.remote(task)] = task.job_id

    def results(self) -> Iterator[TaskResult]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        for ref in ready:
            job_id = self.refs.pop(ref)
            try:
                yield self.ray.get(ref)
            except Exception as exc:  # the task's worker died (killed, out of memory)
                yield TaskResult(job_id, error=f"the Ray task failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started:
            self.ray.shutdown()
