"""Robust distillation from a (dense, robust) teacher, ARD / RSLAD style.

With ``fit(..., distill=DistillConfig(teacher, weight=w, temperature=T))`` the loss of a
step becomes

``L = (1 - w) · ℓ + w · T² · KL(softmax(t / T) ‖ softmax(s / T)) + Σ_r r(model)``

where ``ℓ`` is the task loss of the training mode (clean cross-entropy, PGD / FGSM-RS
cross-entropy on the adversarial inputs, or the TRADES objective), ``s`` the student's
logits on the inputs it is trained on (the adversarial ones under adversarial training,
the clean ones otherwise) and ``t`` the teacher's logits on the clean inputs
(``target="clean"``: the teacher's soft labels, as in ARD and RSLAD) or on the same
adversarial inputs (``target="adversarial"``). The attack itself is unchanged (it
maximizes the student's own loss). The teacher is used in eval mode without gradients and
is never updated; its mode is restored when ``fit`` returns.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustprune.errors import InvalidArgumentError

__all__ = ["DistillConfig", "DISTILL_TARGETS", "distillation_loss", "check_teacher"]

#: what the teacher sees: the clean inputs or the student's adversarial inputs
DISTILL_TARGETS: tuple[str, ...] = ("clean", "adversarial")


@dataclass(frozen=True, kw_only=True, eq=False)
class DistillConfig:
    """Distillation settings of :func:`robustprune.train.fit` (see the module docstring).

    Attributes:
        teacher: the teacher model (same inputs, same number of classes, on the training
            device).
        weight: ``w`` in [0, 1], the share of the distillation term (1: distillation only).
        temperature: ``T > 0`` of the softened distributions.
        target: ``"clean"`` (teacher on the clean inputs) or ``"adversarial"``.
    """

    teacher: nn.Module = field(repr=False)
    weight: float = 0.5
    temperature: float = 2.0
    target: Literal["clean", "adversarial"] = "clean"

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, nn.Module):
            raise InvalidArgumentError(
                f"teacher must be a torch.nn.Module, got {type(self.teacher).__name__}.", argument="teacher"
            )
        if not _real(self.weight) or not 0 <= float(self.weight) <= 1:
            raise InvalidArgumentError(f"weight must be a number in [0, 1], got {self.weight!r}.", argument="weight")
        if not _real(self.temperature) or not float(self.temperature) > 0:
            raise InvalidArgumentError(
                f"temperature must be a finite number > 0, got {self.temperature!r}.", argument="temperature"
            )
        if self.target not in DISTILL_TARGETS:
            raise InvalidArgumentError(
                f"target must be one of {', '.join(DISTILL_TARGETS)}, got {self.target!r}.", argument="target"
            )

    def describe(self) -> dict[str, Any]:
        """Plain data (for checkpoint fingerprints and result rows); the teacher is named
        by its class and a checksum of its parameters."""
        with torch.no_grad():
            checksum = float(sum(p.detach().double().sum() for p in self.teacher.parameters()))
        return {
            "weight": float(self.weight),
            "temperature": float(self.temperature),
            "target": self.target,
            "teacher": f"{type(self.teacher).__name__}:{checksum:.10g}",
        }


def check_teacher(distill: DistillConfig, student: nn.Module, example: torch.Tensor, device: torch.device) -> None:
    """Refuse a teacher that is the student, lives on another device, or does not give one
    logit per class of the student on ``example`` (one input batch); modes are restored."""
    teacher = distill.teacher
    if teacher is student:
        raise InvalidArgumentError("the teacher must be another model than the one trained.", argument="teacher")
    devices = {p.device for p in teacher.parameters()} | {b.device for b in teacher.buffers()}
    if any(d != device for d in devices):
        found = ", ".join(sorted(str(d) for d in devices))
        raise InvalidArgumentError(
            f"the teacher is on {found} but training runs on {device}; move it first "
            f"(teacher.to('{device}')).",
            argument="teacher",
        )
    modes = (teacher.training, student.training)
    try:
        teacher.eval()
        student.eval()
        with torch.no_grad():
            t_out, s_out = teacher(example.to(device)), student(example.to(device))
    except Exception as exc:
        raise InvalidArgumentError(
            f"the teacher does not accept the training inputs ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).",
            argument="teacher",
        ) from exc
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    if not isinstance(t_out, torch.Tensor) or t_out.shape != s_out.shape:
        shape = tuple(t_out.shape) if isinstance(t_out, torch.Tensor) else type(t_out).__name__
        raise InvalidArgumentError(
            f"the teacher's output {shape} does not match the student's {tuple(s_out.shape)} "
            "(a different number of classes?).",
            argument="teacher",
        )


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T² · KL(softmax(t / T) ‖ softmax(s / T))``, batch mean, in fp32."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    q = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean", log_target=True) * (t * t)


def _real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
