"""Adversarial attacks: training attacks (PGD, FGSM-RS, TRADES) and the AutoAttack adapter.

>>> x_adv = pgd(model, x, y, eps=8 / 255)                          # PGD-10, Linf, random start
>>> result = robust_accuracy(model, loaders.test, eps=8 / 255, n_examples=1000)
>>> result.clean_accuracy, result.robust_accuracy, result.per_attack

- :mod:`~robustprune.attacks.training`: :func:`pgd`, :func:`fgsm_rs`, :func:`trades_loss`,
  :class:`AdversarialConfig` (what :func:`robustprune.train.fit` perturbs batches with);
- :mod:`~robustprune.attacks.autoattack`: :func:`robust_accuracy` and :class:`RobustResult`
  (the official AutoAttack code, ``pyautoattack==0.2.0``);
- :mod:`~robustprune.attacks.batches`: :func:`rebatch` (fixed-size evaluation batches).

Inputs live in [0, 1] (models normalize internally), so every budget is in input space.
"""

from robustprune.attacks.autoattack import (
    ATTACKS,
    AUTOATTACK_ATTACKS,
    STANDARD_ATTACKS,
    RobustResult,
    robust_accuracy,
)
from robustprune.attacks.batches import rebatch
from robustprune.attacks.training import (
    ADVERSARIAL_KINDS,
    NORMS,
    AdversarialConfig,
    Norm,
    fgsm_rs,
    pgd,
    trades_attack,
    trades_loss,
    trades_objective,
)

__all__ = [
    "Norm",
    "pgd",
    "fgsm_rs",
    "trades_loss",
    "trades_attack",
    "trades_objective",
    "AdversarialConfig",
    "AUTOATTACK_ATTACKS",
    "STANDARD_ATTACKS",
    "ATTACKS",
    "NORMS",
    "ADVERSARIAL_KINDS",
    "RobustResult",
    "robust_accuracy",
    "rebatch",
]
