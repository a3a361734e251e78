"""What robustness-aware scoring reads: checked ``(x, y)`` data and adversarial examples.

:class:`~robustprune.pruners.importance.AdvTaylorImportance` (gradients of the adversarial
loss) and :class:`~robustprune.pruners.rules.SensitivityRule` (the adversarial loss of cut
copies) both take ``data`` (a DataLoader, any iterable of ``(x, y)`` batches, or one
``(x, y)`` pair of tensors; inputs in [0, 1]) and an
:class:`~robustprune.attacks.AdversarialConfig`. This module checks both up front, reads
batches with the global RNG isolated (a shuffled loader draws its order from it), and crafts
the adversarial examples: PGD for ``kind="pgd"``, FGSM with a random start for ``"fgsm"``,
and for ``"trades"`` PGD on the cross-entropy with the same ``eps``, ``steps`` and
``step_size`` (TRADES' own inner maximization targets a KL term that needs no labels and
scores the clean/adversarial disagreement, not the loss these scores differentiate). Every
random start comes from the caller's :class:`torch.Generator`.

Attacks and forwards run on :func:`eval_clone`, a structural copy of the model in eval mode
whose parameters alias the model's storage: the model's mode, ``requires_grad`` flags,
``.grad`` and hooks are never touched.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustprune import distributed
from robustprune.attacks import AdversarialConfig, fgsm_rs, pgd
from robustprune.attacks.batches import rebatch
from robustprune.errors import InvalidArgumentError
from robustprune.pruners.counting import structural_clone

__all__ = [
    "check_data",
    "check_adversarial",
    "check_count",
    "check_seed",
    "read_batches",
    "craft",
    "describe",
    "eval_clone",
    "device_of",
    "isolated_rng",
    "process_group",
]

_DATA_HINT = "pass a DataLoader of (x, y) batches or a pair (x, y) of tensors, inputs in [0, 1]"


def check_data(data: Any, argument: str = "data") -> None:
    """Refuse ``data`` unless its first batch is ``(x, y)`` with ``x`` a finite floating
    tensor in [0, 1] and ``y`` one integer label per example."""
    x, y = _first_batch(data, argument)
    if not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        raise InvalidArgumentError(
            f"{argument}: inputs must be a non-empty floating batch (N, ...), got dtype {x.dtype} "
            f"and shape {tuple(x.shape)}; {_DATA_HINT}.", argument=argument,
        )
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise InvalidArgumentError(
            f"{argument}: inputs must be finite and in [0, 1] (models normalize internally), got "
            f"values in [{float(x.min()):.4g}, {float(x.max()):.4g}]; drop the normalization "
            "transform from the data.", argument=argument,
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.shape != (x.shape[0],):
        raise InvalidArgumentError(
            f"{argument}: labels must be integer class indices of shape ({x.shape[0]},), got dtype "
            f"{y.dtype} and shape {tuple(y.shape)}; {_DATA_HINT}.", argument=argument,
        )


def check_adversarial(adversarial: Any, argument: str = "adversarial") -> AdversarialConfig:
    """``adversarial`` if it is an :class:`AdversarialConfig`."""
    if not isinstance(adversarial, AdversarialConfig):
        raise InvalidArgumentError(
            f"{argument} must be a robustprune.attacks.AdversarialConfig, e.g. "
            f"AdversarialConfig(kind='pgd', eps=8/255, steps=10); got {type(adversarial).__name__}.",
            argument=argument,
        )
    return adversarial


def check_count(value: Any, argument: str) -> int:
    """An integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"{argument} must be an integer >= 1, got {value!r}.", argument=argument)
    return int(value)


def check_seed(value: Any) -> int:
    """An integer seed >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidArgumentError(f"seed must be an integer >= 0, got {value!r}.", argument="seed")
    return int(value)


def read_batches(
    data: Any, *, device: torch.device, n_batches: int | None = None, n_examples: int | None = None,
    batch_size: int = 64,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_batches`` batches of ``data`` as they come (a pair ``(x, y)`` is one
    batch), or its first ``n_examples`` examples cut into batches of ``batch_size``; on
    ``device``, read with the global RNG isolated."""
    with isolated_rng():
        if n_examples is not None:
            return [(x.to(device), y.to(device)) for x, y in rebatch(data, batch_size, n_examples)]
        if _is_pair(data):
            return [(data[0].to(device), data[1].to(device))]
        out = []
        for batch in data:
            x, y = _split(batch, "data")
            out.append((x.to(device), y.to(device)))
            if n_batches is not None and len(out) >= n_batches:
                break
        return out


def craft(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, adversarial: AdversarialConfig, generator: torch.Generator
) -> torch.Tensor:
    """Adversarial examples for ``(x, y)`` against ``model`` as it is (see the module
    docstring for each kind); the random start comes from ``generator``."""
    a = adversarial
    with torch.enable_grad():
        if a.kind == "fgsm":
            return fgsm_rs(model, x, y, eps=a.eps, norm=a.norm, step_size=a.step_size, generator=generator)
        return pgd(model, x, y, eps=a.eps, norm=a.norm, steps=a.steps, step_size=a.step_size, generator=generator)


def describe(adversarial: AdversarialConfig) -> str:
    """A short label: ``"pgd-10 Linf eps=0.03137"``."""
    steps = 1 if adversarial.kind == "fgsm" else adversarial.steps
    return f"{adversarial.kind}-{steps} {adversarial.norm} eps={adversarial.eps:.4g}"


def eval_clone(model: nn.Module) -> tuple[nn.Module, dict[int, torch.Tensor]]:
    """A structural copy of ``model`` in eval mode whose parameters (new Parameter objects,
    all requiring grad) alias the model's tensors; with ``{id(copy's tensor): model's}``."""
    clone, real = structural_clone(model, meta=False)
    return clone.eval(), real


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU when it has none."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """The global CPU RNG is the same after the block as before it."""
    with torch.random.fork_rng(devices=[]):
        yield


def process_group() -> distributed.DistContext:
    """The current process group (torch.distributed initialized by the caller), else a
    single process; never creates one."""
    if dist.is_available() and dist.is_initialized():
        return distributed.setup(torch.device("cpu"))
    return distributed.DistContext()


def _first_batch(data: Any, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    if _is_pair(data):
        return data[0], data[1]
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise InvalidArgumentError(f"{argument} got {type(data).__name__}; {_DATA_HINT}.", argument=argument)
    with isolated_rng():
        try:
            batch = next(iter(data), None)
        except Exception as exc:
            raise InvalidArgumentError(
                f"{argument}: reading the first batch failed ({type(exc).__name__}: {exc}); {_DATA_HINT}.",
                argument=argument,
            ) from exc
    if batch is None:
        raise InvalidArgumentError(f"{argument} is empty; {_DATA_HINT}.", argument=argument)
    return _split(batch, argument)


def _split(batch: Any, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        if isinstance(batch[0], torch.Tensor) and isinstance(batch[1], torch.Tensor):
            return batch[0], batch[1]
    raise InvalidArgumentError(
        f"{argument} must yield (inputs, labels) tensor pairs, got {type(batch).__name__}; {_DATA_HINT}.",
        argument=argument,
    )


def _is_pair(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list)) and len(data) == 2
        and isinstance(data[0], torch.Tensor) and isinstance(data[1], torch.Tensor)
    )

