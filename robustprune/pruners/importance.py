"""The importance contract: how a channel score becomes the group's vector ``theta``.

An importance is called on one torch-pruning dependency group (the coupled layers of one
channel set) and returns one non-negative score per channel, or None to leave the group
alone. Attention heads and grouped convolutions return one score per channel of every
channel group; the pruner averages them per unit. ``theta`` is then, per unit:

- for an :class:`Importance`, ``theta = score ** (1 / power)`` with its declared ``power``
  (:class:`GroupL2Importance`, the default, declares ``power = 2``: torch-pruning's
  ``GroupMagnitudeImportance(p=2, normalizer=None)`` returns *squared* group norms, so
  ``theta_i = sqrt(mean_l ||w_{l,i}||_2^2)`` over the coupled layers ``l`` and
  ``eps_2(theta, k)`` is exactly the relative Frobenius norm of the group's parameters
  that pruning removes);
- for any other callable ``group -> scores`` (e.g. torch-pruning's
  ``tp.importance.GroupTaylorImportance()``, after a backward pass so that gradients
  exist), the scores themselves: ε is then the relative residual of those scores.

Wrap a callable to declare its power: ``Importance(tp.importance.GroupMagnitudeImportance(
p=2, normalizer=None), power=2)`` means the same as the default.

An importance that needs the model before it scores (gradients, activations) has a
``prepare(model) -> dict | None`` method: :class:`~robustprune.pruners.channel.ChannelPruner`
calls it once per plan, after tracing and before any group is scored, on the model whose
parameter objects the scored groups hold. It must leave the model as it was (weights, mode,
``requires_grad``, ``.grad``, hooks) and the global RNG alone; the dict it returns (plain
data: its cost) is recorded in the plan's settings.

Importances by name (:data:`IMPORTANCES`, :func:`make_importance`): ``"l2"``
(:class:`GroupL2Importance`) and ``"adv-taylor"`` (:class:`AdvTaylorImportance`: first-order
Taylor scores on the adversarial loss, which needs ``data`` and ``adversarial``).
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustprune import distributed
from robustprune.attacks import AdversarialConfig
from robustprune.errors import InvalidArgumentError, PruningError, UnknownNameError
from robustprune.pruners._tp import group_magnitude, group_parameters, group_taylor
from robustprune.pruners.adversarial import (
    check_adversarial,
    check_count,
    check_data,
    check_seed,
    craft,
    device_of,
    eval_clone,
    process_group,
    read_batches,
)

__all__ = [
    "Importance",
    "GroupL2Importance",
    "AdvTaylorImportance",
    "IMPORTANCES",
    "UnknownImportanceError",
    "ImportanceLike",
    "make_importance",
    "check_importance",
    "power_of",
    "group_theta",
]

logger = logging.getLogger(__name__)

#: what ``importance=`` accepts: an :class:`Importance` or a plain ``group -> scores`` callable
ImportanceLike = Callable[[Any], "torch.Tensor | None"]


class Importance:
    """A ``group -> per-channel scores`` callable with a declared ``power``:
    ``theta = score ** (1 / power)`` (``power = 1``: the scores are theta).

    Subclasses may override ``__call__`` and set ``power`` as a class attribute instead of
    wrapping a function."""

    power: float = 1.0

    def __init__(self, fn: ImportanceLike, *, power: float = 1.0) -> None:
        if not callable(fn):
            raise InvalidArgumentError(
                f"Importance wraps a callable group -> per-channel scores, got {type(fn).__name__}."
            )
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or not float(power) > 0:
            raise InvalidArgumentError(f"Importance power must be a positive number, got {power!r}.")
        self.fn = fn
        self.power = float(power)

    def __call__(self, group: Any) -> torch.Tensor | None:
        return self.fn(group)

    def __repr__(self) -> str:
        return f"Importance({self.fn!r}, power={self.power:g})"


class GroupL2Importance(Importance):
    """Default importance: ``theta_i = sqrt(mean over coupled layers of ||w_{l,i}||_2^2)``.

    Scores are torch-pruning's ``GroupMagnitudeImportance(p=2, normalizer=None)``, squared
    group norms, hence ``power = 2``."""

    def __init__(self) -> None:
        super().__init__(group_magnitude(), power=2)

    def __repr__(self) -> str:
        return "GroupL2Importance()"


class AdvTaylorImportance(Importance):
    """First-order Taylor importance on the adversarial loss (``power = 1``: the scores are
    theta).

    ``prepare(model)`` attacks ``model`` (eval mode, on a copy aliasing its weights) on the
    first ``n_batches`` batches of ``data`` with ``adversarial`` (see
    :mod:`robustprune.pruners.adversarial`; random starts from a generator seeded with
    ``seed``, so the global RNG is untouched and the scores are deterministic) and averages
    ``g = d CE(f(x_adv), y) / d theta`` over the batches, summed over ranks when a
    torch.distributed process group is initialized (every rank then scores the same). The
    gradient is kept privately: the model's ``.grad`` is never changed (while a group is
    scored it is swapped in and restored). A channel's score is torch-pruning's
    ``GroupTaylorImportance`` on that gradient: ``|sum_j w_j g_j|`` over the channel's weights
    in each coupled Conv/Linear layer, *averaged* over those layers (``multivariable=True``,
    ``normalizer=None``; torch-pruning 1.6.1 leaves BatchNorm out), the first-order estimate of
    the adversarial-loss change when the channel is removed.

    Args:
        data: a DataLoader (or iterable) of ``(x, y)`` batches, or one ``(x, y)`` pair of
            tensors (one batch), inputs in [0, 1]; the first batch is checked here.
        adversarial: the :class:`~robustprune.attacks.AdversarialConfig` to attack with.
        n_batches: batches to attack and differentiate (cost: ``n_batches`` attacks plus
            one backward each; 4 batches of 128 with PGD-10 take about 3 minutes for
            resnet18-cifar on one CPU thread, ``benchmarks/bench_sensitivity.py``).
        seed: seeds the attack's random start.
    """

    def __init__(self, data: Any, adversarial: AdversarialConfig, *, n_batches: int = 4, seed: int = 0) -> None:
        check_data(data, "data")
        self.data = data
        self.adversarial = check_adversarial(adversarial)
        self.n_batches = check_count(n_batches, "n_batches")
        self.seed = check_seed(seed)
        super().__init__(group_taylor(), power=1)
        self._grads: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}

    def prepare(self, model: nn.Module) -> dict[str, Any]:
        """Accumulate the adversarial-loss gradient of ``model`` (see the class docstring);
        returns its cost ``{"importance_seconds": s, "importance_batches": b}``."""
        start = time.perf_counter()
        clone, real = eval_clone(model)
        params = [p for p in clone.parameters() if p.requires_grad]
        device = device_of(model)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        sums = [torch.zeros_like(p) for p in params]
        count = 0
        for x, y in read_batches(self.data, device=device, n_batches=self.n_batches):
            x_adv = craft(clone, x, y, self.adversarial, generator)
            with torch.enable_grad():
                loss = F.cross_entropy(clone(x_adv), y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for s, g in zip(sums, grads):
                if g is not None:
                    s += g.detach()
            count += 1
        sums, count = _sum_over_ranks(sums, count, device)
        self._grads = {id(real[id(p)]): (real[id(p)], s / max(count, 1)) for p, s in zip(params, sums)}
        seconds = time.perf_counter() - start
        logger.info("adv-taylor: gradients of the adversarial loss on %d batches in %.1f s", count, seconds)
        return {"importance_seconds": round(seconds, 2), "importance_batches": count}

    def __call__(self, group: Any) -> torch.Tensor | None:
        params = group_parameters(group)
        missing = [p for p in params if id(p) not in self._grads]
        if missing:
            raise PruningError(
                "AdvTaylorImportance has no gradient for this model's parameters: call "
                "importance.prepare(model) first (ChannelPruner.plan does) on the model being pruned."
            )
        saved = [(p, p.grad) for p in params]
        try:
            for p in params:
                p.grad = self._grads[id(p)][1]
            return self.fn(group)
        finally:
            for p, g in saved:
                p.grad = g

    def __repr__(self) -> str:
        a = self.adversarial
        steps = 1 if a.kind == "fgsm" else a.steps
        return (f"AdvTaylorImportance(kind={a.kind!r}, norm={a.norm!r}, eps={a.eps:.4g}, steps={steps}, "
                f"n_batches={self.n_batches})")


#: importance name -> class (``"adv-taylor"`` needs ``data`` and ``adversarial``)
IMPORTANCES: dict[str, type[Importance]] = {"l2": GroupL2Importance, "adv-taylor": AdvTaylorImportance}


class UnknownImportanceError(UnknownNameError, InvalidArgumentError):
    """An importance name that is not in :data:`IMPORTANCES` (``argument="importance"``)."""


def make_importance(
    spec: Any, *, data: Any = None, adversarial: AdversarialConfig | None = None
) -> ImportanceLike:
    """An importance from a name of :data:`IMPORTANCES`, an :class:`Importance` or a plain
    callable ``group -> scores`` (returned as they are); None is :class:`GroupL2Importance`.
    ``"adv-taylor"`` is built from ``data`` and ``adversarial`` (both required)."""
    if spec is None:
        return GroupL2Importance()
    if isinstance(spec, str):
        if spec not in IMPORTANCES:
            raise UnknownImportanceError(
                f"Unknown importance {spec!r}; choose one of {', '.join(IMPORTANCES)}, or pass an "
                "Importance or a callable group -> per-channel scores.", argument="importance",
            )
        if spec == "adv-taylor":
            if data is None or adversarial is None:
                raise InvalidArgumentError(
                    "importance='adv-taylor' needs data= (batches of (x, y), inputs in [0, 1]) and "
                    "adversarial= (an AdversarialConfig): call make_importance('adv-taylor', data=..., "
                    "adversarial=...) or pass importance=AdvTaylorImportance(data, adversarial).",
                    argument="importance",
                )
            return AdvTaylorImportance(data, adversarial)
        return IMPORTANCES[spec]()
    if not callable(spec):
        raise InvalidArgumentError(
            f"importance must be a name ({', '.join(IMPORTANCES)}), an Importance or a callable "
            f"group -> per-channel scores (e.g. tp.importance.GroupTaylorImportance()), got "
            f"{type(spec).__name__}.", argument="importance",
        )
    return spec


def check_importance(importance: Any) -> ImportanceLike:
    """``importance=`` of a pruner: :func:`make_importance` without data (so ``"l2"``, an
    :class:`Importance` or a callable; :class:`GroupL2Importance` when None)."""
    return make_importance(importance)


def power_of(importance: ImportanceLike) -> float:
    """The declared power of an :class:`Importance`; 1 for a plain callable."""
    return float(importance.power) if isinstance(importance, Importance) else 1.0


def group_theta(scores: Any, channel_groups: int, power: float, name: str) -> torch.Tensor | None:
    """``theta`` (float64, one entry per unit) from an importance's per-channel ``scores``:
    averaged over the ``channel_groups``, then ``** (1 / power)``. None (skip the group) when
    the scores do not split into the channel groups; raises for negative or non-finite
    scores."""
    imp = torch.as_tensor(scores).detach().to("cpu", torch.float64).flatten()
    if imp.numel() % channel_groups:
        logger.debug("skipping group %s: %d scores for %d channel groups", name, imp.numel(), channel_groups)
        return None
    theta = imp.view(channel_groups, -1).mean(0)
    if not torch.isfinite(theta).all() or (theta < 0).any():
        raise PruningError(
            f"The importance of group '{name}' has negative or non-finite entries "
            "(NaN/inf weights?); check the weights or pass a non-negative importance."
        )
    if power == 1:
        return theta
    return theta.sqrt() if power == 2 else theta ** (1.0 / power)


def _sum_over_ranks(sums: list[torch.Tensor], count: int, device: torch.device) -> tuple[list[torch.Tensor], int]:
    """The per-parameter sums and the batch count summed over every rank (one collective)."""
    ctx = process_group()
    if not ctx.distributed:
        return sums, count
    flat = torch.cat([s.detach().flatten().double() for s in sums] + [torch.tensor([float(count)], dtype=torch.float64, device=device)])
    flat = distributed.sum_over_ranks(flat, ctx, device)
    out, at = [], 0
    for s in sums:
        out.append(flat[at : at + s.numel()].view_as(s).to(device=s.device, dtype=s.dtype))
        at += s.numel()
    return out, int(round(float(flat[-1])))
