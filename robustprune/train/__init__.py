"""Training and finetuning: :func:`fit` with a validated :class:`FitConfig`.

- :mod:`~robustprune.train.config`: :class:`FitConfig` (validated once), :data:`SCHEDULERS`;
- :mod:`~robustprune.train.fitting`: :func:`fit`, which sets a run up and drives the epochs;
- :mod:`~robustprune.train.loop`: one epoch of (adversarial) updates and the test accuracy;
- :mod:`~robustprune.train.distill`: :class:`DistillConfig`, robust distillation from a teacher;
- :mod:`~robustprune.train.pruning`: the pruning steps of a schedule, between epochs;
- :mod:`~robustprune.train.resume`: checkpoints that resume bit-for-bit;
- :mod:`~robustprune.train.rng`: seeding and capturing every random state;
- :mod:`~robustprune.train.setup`: loaders, sharding, autocast, optimizer and scheduler;
- :mod:`~robustprune.train.results`: :class:`EpochStats`, :class:`FitResult`;
- :mod:`~robustprune.train.loggers`: :class:`CSVLogger`, :class:`TensorBoardLogger` (``fit(loggers=...)``).
"""

from robustprune.attacks import AdversarialConfig as AdversarialConfig
from robustprune.train.config import AMP_MODES as AMP_MODES
from robustprune.train.config import SCHEDULERS, FitConfig
from robustprune.train.config import AmpMode as AmpMode
from robustprune.train.distill import DistillConfig
from robustprune.train.fitting import fit
from robustprune.train.loggers import CSVLogger, Logger, TensorBoardLogger
from robustprune.train.results import EpochStats, FitResult
from robustprune.train.resume import CHECKPOINT_NAME
from robustprune.train.resume import Regularizer as Regularizer

__all__ = [
    "FitConfig", "DistillConfig", "SCHEDULERS", "EpochStats", "FitResult", "fit", "CHECKPOINT_NAME",
    "Logger", "CSVLogger", "TensorBoardLogger",
]
