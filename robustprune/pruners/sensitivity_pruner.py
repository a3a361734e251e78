"""Robustness-sensitivity pruning: a per-group width learned from the adversarial loss.

For every dependency group the pruner measures how much the adversarial loss on a held-out
batch rises when that group alone is cut to a few widths (a real structural cut of a copy,
:mod:`robustprune.pruners.sensitivity`), convexifies each group's loss-versus-units curve,
and removes units cheapest first — least loss increase per MAC removed — over all groups,
until ``target_macs`` is met (or the fraction ``ratio`` of all units is gone). Like HARP's
per-layer rates, the allocation comes from robustness, not from weight magnitude, but no
mask is trained: the cost is a fixed number of forward passes.

Cost: one attack of ``n_examples`` (the ``adversarial`` config's steps, forward and backward)
plus one forward of ``n_examples`` per group and width (less where the unchanged start of
the network is reused). With the defaults on resnet18-cifar (width 64, 32x32 inputs, PGD-10,
49 loss evaluations) the whole call took 66-78 s on one CPU thread, 42 s with
``n_examples=64`` (``benchmarks/bench_sensitivity.py``; the budget is 120 s). The seconds
and the number of loss evaluations are recorded in the report's settings
(``sensitivity_seconds``, ``loss_evaluations``) and logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from robustprune.attacks import AdversarialConfig
from robustprune.errors import InvalidArgumentError
from robustprune.pruners.channel import ChannelPruner
from robustprune.pruners.importance import ImportanceLike
from robustprune.pruners.rules import SensitivityRule

__all__ = ["SensitivityPruner"]


class SensitivityPruner(ChannelPruner):
    """Allocate the MACs budget over groups by measured adversarial-loss sensitivity.

    >>> adv = AdversarialConfig(kind="pgd", eps=8 / 255, steps=10)
    >>> rp.prune(model, method="sensitivity", target_macs=0.25, data=loaders.test, adversarial=adv)

    Args:
        data: held-out ``(x, y)`` batches (a DataLoader or one ``(x, y)`` pair), inputs in
            [0, 1]; its first ``n_examples`` examples are used. Under torch.distributed every
            rank uses its own first ``n_examples`` and the measured losses are summed over
            ranks, so every rank makes the same decision.
        adversarial: the :class:`~robustprune.attacks.AdversarialConfig` whose attack crafts
            the held-out adversarial examples (once, against the unpruned model; TRADES
            crafts with PGD on the cross-entropy).
        target_macs: the fraction of the original MACs to keep (solved to within
            ``macs_tolerance``).
        ratio: instead of ``target_macs``, the fraction of all units to remove.
        widths: the kept fractions each group is measured at, in (0, 1); a group is never
            cut below the smallest one.
        n_examples: held-out examples to measure on.
        importance: which units a cut keeps (``group.order``); default the group ℓ2
            magnitude; e.g. ``AdvTaylorImportance(train_loader, adv)``.
        round_to, min_keep, ignored_layers, macs_tolerance, progress: as for
            :class:`~robustprune.pruners.channel.ChannelPruner`.
        seed: seeds the attack's random start (the global RNG is never used).
    """

    def __init__(
        self,
        data: Any,
        adversarial: AdversarialConfig,
        target_macs: float | None = None,
        ratio: float | None = None,
        *,
        widths: Sequence[float] = (0.75, 0.5, 0.25, 0.1),
        n_examples: int = 128,
        importance: ImportanceLike | str | None = None,
        round_to: int | None = None,
        min_keep: int = 1,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        macs_tolerance: float = 0.01,
        progress: bool = False,
        seed: int = 0,
    ) -> None:
        if (ratio is None) == (target_macs is None):
            raise InvalidArgumentError(
                "Give exactly one of target_macs (the fraction of MACs to keep, e.g. 0.25) and ratio "
                f"(the fraction of all units to remove); got target_macs={target_macs!r}, ratio={ratio!r}.",
                argument="target_macs",
            )
        rule = SensitivityRule(data, adversarial, widths=widths, n_examples=n_examples, seed=seed, ratio=ratio)
        super().__init__(
            rule, importance, round_to=round_to, min_keep=min_keep, ignored_layers=ignored_layers,
            target_macs=target_macs, macs_tolerance=macs_tolerance, progress=progress,
        )

    @property
    def ratio(self) -> float | None:
        """The fraction of all units to remove (None in target-MACs mode)."""
        return self.rule.ratio
