"""The bookkeeping columns of a results row: what a model cost to train, how it was
scheduled and finetuned, and what it is compared with.

``cost`` counts the training a model took in total, the dense share included:
``epochs`` (dense + finetune for a pruned model, the training's own epochs for
during-training and scratch models) and ``attack_steps`` (per training example: the attack's
steps per epoch, summed over the epochs; FGSM is one step, standard training none).
"""

from __future__ import annotations

from typing import Any

from robustprune.attacks import AdversarialConfig
from robustprune.recipe.config import FinetuneConfig, PruneConfig, TrainConfig
from robustprune.recipe.plan import Job

__all__ = ["attack_steps", "cost", "add_costs", "schedule_column", "finetune_column", "comparison_columns"]


def attack_steps(adversarial: AdversarialConfig | None) -> int:
    """Attack steps per training example and epoch."""
    if adversarial is None:
        return 0
    return 1 if adversarial.kind == "fgsm" else int(adversarial.steps)


def cost(cfg: TrainConfig | FinetuneConfig | None, epochs: int | None = None) -> dict[str, int]:
    """The cost of one training phase (``epochs`` overrides the section's)."""
    if cfg is None:
        return {"epochs": 0, "attack_steps": 0}
    n = cfg.epochs if epochs is None else int(epochs)
    return {"epochs": int(n), "attack_steps": int(n) * attack_steps(cfg.adversarial)}


def add_costs(*parts: dict[str, int]) -> dict[str, int]:
    """The sum of phase costs."""
    return {k: sum(p[k] for p in parts) for k in ("epochs", "attack_steps")}


def schedule_column(entry: PruneConfig | None) -> dict[str, Any] | None:
    """The row's ``schedule`` (None for the dense and scratch models)."""
    if entry is None or entry.method == "scratch":
        return None
    if entry.schedule is None:
        return {"kind": "one-shot", "steps": 1, "at": None, "every": 1, "restart": False}
    s = entry.schedule
    return {"kind": s.kind, "steps": int(s.steps), "at": s.at, "every": int(s.every), "restart": s.restart}


def finetune_column(cfg: FinetuneConfig, entry: PruneConfig) -> dict[str, Any]:
    """The row's ``finetune``: its epochs, distillation and regularizers."""
    distill = None if cfg.distill is None else {
        "weight": cfg.distill.weight, "temperature": cfg.distill.temperature, "target": cfg.distill.target,
    }
    return {
        "epochs": int(cfg.epochs),
        "distill": distill,
        "regularizers": [r.kind for r in (*cfg.regularizers, *entry.regularizers)],
    }


def comparison_columns(job: Job) -> dict[str, Any]:
    """``compare_key``, ``reference`` and ``scratch`` of a row (see :mod:`robustprune.report`)."""
    return {"compare_key": job.compare_key, "reference": job.reference, "scratch": job.scratch}
