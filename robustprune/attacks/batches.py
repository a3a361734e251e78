"""Batches of a robust evaluation: ``(x, y)`` pairs of exactly ``batch_size`` examples,
cut in order from a loader or a tuple of tensors, whatever the loader's own batching."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from robustprune._inputs import BatchValidator, check_int, split_labelled_batch
from robustprune.errors import InvalidArgumentError

__all__ = ["rebatch", "split_batch", "num_examples"]


def rebatch(
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    n_examples: int | None,
    *,
    check: BatchValidator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(x, y)`` batches of exactly ``batch_size`` examples (the last may be
    smaller) from a loader of ``(x, y)`` batches or from a tuple of tensors, stopping after
    ``n_examples``. The cut does not depend on how ``data`` itself is batched.

    With ``check``, every batch of ``data`` (the part of it that is used) is validated by
    the :class:`~robustprune._inputs.BatchValidator` before it is cut or concatenated.
    ``batch_size`` and ``n_examples`` are checked when it is called, before any batch."""
    check_int("batch_size", batch_size, low=1)
    if n_examples is not None:
        check_int("n_examples", n_examples, low=1, why="or None for every example")
    return _rebatch(data, batch_size, n_examples, check=check)


def _rebatch(
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    n_examples: int | None,
    *,
    check: BatchValidator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = split_batch(data)
        same = x.ndim > 0 and y.ndim > 0 and x.shape[0] == y.shape[0]
        if check is not None:  # the examples used; all of them when x and y do not match
            cut = same and n_examples is not None
            check(x[:n_examples] if cut else x, y[:n_examples] if cut else y)
        elif not same:
            raise InvalidArgumentError(
                f"x and y have different lengths ({tuple(x.shape)} and {tuple(y.shape)})."
            )
        n = x.shape[0] if n_examples is None else min(n_examples, x.shape[0])
        for start in range(0, n, batch_size):
            yield x[start : min(start + batch_size, n)], y[start : min(start + batch_size, n)]
        return
    if not isinstance(data, Iterable):
        raise InvalidArgumentError(
            f"data must be a DataLoader or a tuple (x, y) of tensors, got {type(data).__name__}."
        )
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    held = 0
    seen = 0
    for number, batch in enumerate(data, 1):
        x, y = split_batch(batch, where=f"batch {number}")
        if n_examples is not None:
            x, y = x[: n_examples - seen], y[: n_examples - seen]
        if check is not None:
            check(x, y, f"batch {number}")
        seen += x.shape[0]
        xs.append(x)
        ys.append(y)
        held += x.shape[0]
        while held >= batch_size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:batch_size], y_all[:batch_size]
            xs, ys = [x_all[batch_size:]], [y_all[batch_size:]]
            held -= batch_size
        if n_examples is not None and seen >= n_examples:
            break
    if held > 0:
        yield torch.cat(xs), torch.cat(ys)


def num_examples(data: Any) -> int | None:
    """How many examples ``data`` holds, when it can tell (a tuple of tensors, a loader over
    a sized dataset), else ``None``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return int(data[0].shape[0])
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None  # type: ignore[arg-type]
    except TypeError:
        return None


def split_batch(batch: Any, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(inputs, labels)`` tensors of one batch (a DataLoader batch or a tuple)."""
    x, y = split_labelled_batch(batch, "data", where)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x, y
    at = f" ({where})" if where else ""
    raise InvalidArgumentError(
        f"Bad batch in data{at}: expected (inputs, labels) tensors, got ({type(x).__name__}, "
        f"{type(y).__name__}); wrap the data in a DataLoader over a TensorDataset.",
        argument="data",
    )
