"""The CPU thread count of the CLI and of recipe runs: one default rule, applied once.

PyTorch's own default is one intra-op thread per core. On a machine whose cores are busy
with anything else (another job, DataLoader workers) every parallel region waits for the
slowest thread, and the small convolutions of robustprune's models gain little from more
threads anyway: ``benchmarks/bench_threads.py`` measured ``robustprune eval``-like work on
this project's shared 2-core machine (load 4.6 to 8.5) 21x slower with 2 threads than with
1 for ``cnn-small`` on digits and 24x for ``resnet18-cifar`` width 16, batch-1 latency 8x
(``benchmarks/results/threads.md``).
So the default is **half the CPUs this process may use, at most 4, at least 1**
(:func:`default_threads`): one thread on 2 cores, four on 8 or more, leaving the other
half to the DataLoader workers (see :func:`robustprune.data.default_num_workers`) and to
the rest of the machine. ``--threads N`` (CLI) or ``threads = N`` (a recipe's top level)
fixes it; the count used is recorded in every results row.
"""

from __future__ import annotations

import contextvars
import os

import torch

from robustprune._inputs import check_int

__all__ = [
    "MAX_DEFAULT_THREADS", "REQUESTED", "available_cpus", "default_threads", "resolve_threads", "use_threads",
]

#: the default never uses more threads than this
MAX_DEFAULT_THREADS = 4

#: the thread count the running CLI command was given (``--threads``; None: not given),
#: which wins over a recipe's ``threads`` in :func:`robustprune.recipe.run_recipe`
REQUESTED: contextvars.ContextVar[int | None] = contextvars.ContextVar("robustprune_threads", default=None)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Half the available CPUs, at most :data:`MAX_DEFAULT_THREADS`, at least 1."""
    return max(1, min(MAX_DEFAULT_THREADS, available_cpus() // 2))


def resolve_threads(*choices: int | None) -> int:
    """The first of ``choices`` that is not None (each checked: an integer >= 1), else
    :func:`default_threads`; e.g. ``resolve_threads(cli_threads, recipe.threads)``."""
    for value in choices:
        if value is not None:
            check_int("threads", value, low=1, why="CPU threads for PyTorch")
            return int(value)
    return default_threads()


def use_threads(*choices: int | None) -> int:
    """``torch.set_num_threads`` with :func:`resolve_threads` of ``choices``; returns the count."""
    n = resolve_threads(*choices)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
