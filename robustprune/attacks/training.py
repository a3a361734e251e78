"""Training attacks: PGD (ℓ∞ and ℓ2), FGSM with a random start, TRADES.

>>> x_adv = pgd(model, x, y, eps=8 / 255)                          # PGD-10, Linf, random start

Inputs live in [0, 1] (models normalize internally), so every budget is in input space:
an ℓ∞ budget ``eps`` bounds ``max_i |x'_i - x_i|``, an ℓ2 budget bounds ``||x' - x||_2``
per example. Every attack returns points that are inside the budget *and* inside [0, 1].

Training attacks never change the model's mode (the caller decides train or eval mode),
never accumulate gradients into the model's parameters, and draw their random starts
from their own :class:`torch.Generator`, so they leave the global RNG alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from robustprune.attacks._checks import check_attack, check_beta, check_step_size, runs_on
from robustprune.errors import InvalidArgumentError

__all__ = [
    "Norm",
    "AdversarialKind",
    "NORMS",
    "ADVERSARIAL_KINDS",
    "pgd",
    "fgsm_rs",
    "trades_loss",
    "trades_attack",
    "trades_objective",
    "AdversarialConfig",
    "check_budget",
    "check_budget_for_inputs",
]

Norm = Literal["Linf", "L2"]
AdversarialKind = Literal["pgd", "fgsm", "trades"]
#: the threat models: ℓ∞ and ℓ2 budgets in input space
NORMS: tuple[str, ...] = get_args(Norm)
#: the training attacks of :class:`AdversarialConfig`
ADVERSARIAL_KINDS: tuple[str, ...] = get_args(AdversarialKind)
_TINY = 1e-12


# --------------------------------------------------------------------------- training attacks


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "Linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy loss (Madry et al., 2018).

    ``x_{t+1} = clip_[0,1]( Π_B(x_0, eps)( x_t + α · g_t ) )`` with
    ``g_t = sign(∇ℓ)`` for ``Linf`` and ``g_t = ∇ℓ / ||∇ℓ||_2`` (per example) for ``L2``;
    ``ℓ`` is the summed cross-entropy, ``Π`` the projection onto the ε-ball around ``x``.

    Args:
        model: maps a batch in [0, 1] to logits. Its mode is left as it is.
        x: clean inputs in [0, 1], shape ``(N, ...)``.
        y: integer labels, shape ``(N,)``.
        eps: budget (≥ 0) in input space; ``eps=0`` returns ``x`` unchanged.
        norm: ``"Linf"`` or ``"L2"``.
        steps: gradient steps (≥ 0).
        step_size: α; default ``2.5 * eps / steps`` (Madry et al.).
        random_start: start from a uniform point of the ε-ball (clipped to [0, 1]).
        generator: draws the random start; default a fresh generator seeded with ``seed``
            on ``x``'s device, so the global RNG is never touched.
        seed: seed of the default generator.

    Returns:
        ``x_adv`` (detached, same dtype as ``x``) with ``||x_adv - x|| ≤ eps`` and
        ``0 ≤ x_adv ≤ 1``.

    Bad arguments (inputs outside [0, 1] or not finite, labels that are not class indices,
    a NaN step) are refused before the model runs.
    """
    check_budget(eps, norm, steps)
    check_attack(model, x, y, step_size=step_size, seed=seed, random_start=random_start, generator=generator)
    with runs_on(x):
        return pgd_unchecked(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=random_start,
                    generator=generator, seed=seed)


def pgd_unchecked(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: Norm = "Linf", steps: int = 10,
         step_size: float | None = None, random_start: bool = True, generator: torch.Generator | None = None,
         seed: int = 0) -> torch.Tensor:
    """:func:`pgd` on arguments already checked (fit's batches)."""
    x = x.detach()
    if eps == 0 or (steps == 0 and not random_start):
        return x.clone()
    alpha = _default_step(eps, steps) if step_size is None else float(step_size)
    delta = _random_delta(x, eps, norm, _generator(x, generator, seed)) if random_start else None
    x_adv = x.clone() if delta is None else (x + delta).clamp_(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = _ascend(x_adv.detach(), grad, alpha, norm)
            x_adv = _project(x_adv, x, eps, norm)
    return x_adv.detach()


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "Linf",
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """FGSM with a random start, the "fast" adversarial training attack (Wong et al., 2020).

    ``x' = clip_[0,1]( Π_B(x, eps)( x + δ_0 + α · g ) )``, ``δ_0`` uniform in the ε-ball,
    ``g`` the sign (Linf) or normalized (L2) gradient at ``x + δ_0``, ``α = 1.25 eps`` by
    default. Same guarantees and arguments as :func:`pgd`.
    """
    check_step_size(step_size)
    alpha = 1.25 * eps if step_size is None else step_size
    return pgd(
        model, x, y, eps=eps, norm=norm, steps=1, step_size=alpha, random_start=True,
        generator=generator, seed=seed,
    )


def trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "Linf",
    steps: int = 10,
    step_size: float | None = None,
    beta: float = 6.0,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES objective (Zhang et al., 2019) with its inner maximization.

    ``L = CE(f(x), y) + β · (1/N) Σ_i KL( softmax f(x_i) || softmax f(x'_i) )`` where
    ``x'`` maximizes the KL term (:func:`trades_attack`). The model's mode is not changed
    (the reference code runs the inner maximization in eval mode;
    :func:`robustprune.train.fit` does too).

    Returns:
        ``(loss, logits)``: the scalar loss (differentiable in the parameters) and the
        clean logits ``f(x)`` (for accuracy bookkeeping).
    """
    check_beta(beta)
    x_adv = trades_attack(
        model, x, eps=eps, norm=norm, steps=steps, step_size=step_size,
        generator=generator, seed=seed,
    )
    logits = model(x.detach())
    return trades_objective(logits, model(x_adv), y, beta), logits


def trades_objective(
    logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """``CE(logits, y) + β · (1/N) Σ_i KL(softmax logits_i || softmax logits_adv_i)``, in fp32."""
    check_beta(beta)
    kl = F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1),
        F.softmax(logits.float(), dim=1),
        reduction="sum",
    ) / max(1, logits.shape[0])
    return F.cross_entropy(logits.float(), y) + beta * kl


def trades_attack(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "Linf",
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The inner maximization of :func:`trades_loss`: ``argmax_{x' ∈ B(x, eps) ∩ [0,1]}
    KL(softmax f(x) || softmax f(x'))`` by ``steps`` projected steps (sign steps for Linf,
    normalized for L2) from ``x + 0.001 · N(0, I)``, as in the reference code. Returns
    detached ``x'``; the noise comes from ``generator`` (default: seeded with ``seed``)."""
    check_budget(eps, norm, steps)
    check_attack(model, x, None, step_size=step_size, seed=seed, generator=generator, labels=False)
    with runs_on(x):
        return trades_attack_unchecked(model, x, eps=eps, norm=norm, steps=steps, step_size=step_size, generator=generator,
                              seed=seed)


def trades_attack_unchecked(model: nn.Module, x: torch.Tensor, *, eps: float, norm: Norm = "Linf", steps: int = 10,
                   step_size: float | None = None, generator: torch.Generator | None = None,
                   seed: int = 0) -> torch.Tensor:
    """:func:`trades_attack` on arguments already checked (fit's batches)."""
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = _default_step(eps, steps) if step_size is None else float(step_size)
    g = _generator(x, generator, seed)
    with torch.no_grad():
        p_nat = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        x_adv = _project((x + 0.001 * noise), x, eps, norm)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_nat, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        with torch.no_grad():
            x_adv = _project(_ascend(x_adv.detach(), grad, alpha, norm), x, eps, norm)
    return x_adv.detach()


@dataclass(frozen=True, kw_only=True)
class AdversarialConfig:
    """How :func:`robustprune.train.fit` perturbs each training batch.

    Attributes:
        kind: ``"pgd"`` (Madry AT), ``"fgsm"`` (FGSM with random start, "fast" AT) or
            ``"trades"`` (TRADES loss with weight ``beta``).
        norm: ``"Linf"`` or ``"L2"``.
        eps: budget in input space ([0, 1] pixels), e.g. 8/255 (CIFAR Linf), 0.5 (L2).
        steps: attack iterations (PGD, TRADES; FGSM always takes one step).
        step_size: per-step size; default ``2.5 * eps / steps`` (PGD, TRADES) or
            ``1.25 * eps`` (FGSM).
        beta: TRADES trade-off weight.
    """

    kind: AdversarialKind = "pgd"
    norm: Norm = "Linf"
    eps: float
    steps: int = 10
    step_size: float | None = None
    beta: float = 6.0

    def __post_init__(self) -> None:
        if self.kind not in ADVERSARIAL_KINDS:
            raise InvalidArgumentError(
                f"Unknown adversarial training kind '{self.kind}'; use {_one_of(ADVERSARIAL_KINDS)}.",
                argument="kind",
            )
        check_budget(self.eps, self.norm, self.steps)
        if self.kind in ("pgd", "trades") and self.steps < 1:
            raise InvalidArgumentError(
                f"{self.kind} training needs steps >= 1 (attack iterations), got {self.steps}; "
                "kind='fgsm' is the one-step attack.",
                argument="steps",
            )
        check_step_size(self.step_size)
        check_beta(self.beta)


# --------------------------------------------------------------------------- budgets and steps


def check_budget(eps: float, norm: str, steps: int) -> None:
    """Refuse a norm outside :data:`NORMS`, an ``eps`` that is not a finite number >= 0 (or,
    under ``Linf``, above 1: inputs live in [0, 1]) and a ``steps`` that is not an integer
    >= 0 (the error names the offending argument)."""
    if not isinstance(norm, str) or norm not in NORMS:
        raise InvalidArgumentError(f"Unknown norm {norm!r}; use {_one_of(NORMS)}.", argument="norm")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or eps == float("inf"):
        raise InvalidArgumentError(f"eps must be a finite number >= 0, got {eps!r}.", argument="eps")
    if norm == "Linf" and eps > 1:
        raise InvalidArgumentError(
            f"eps={eps!r} under Linf: inputs live in [0, 1], so a budget above 1 allows every "
            "input and means nothing; give the budget in [0, 1] pixel units (e.g. 8/255, not 8).",
            argument="eps",
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InvalidArgumentError(f"steps must be an integer >= 0, got {steps!r}.", argument="steps")


def check_budget_for_inputs(eps: float, norm: str, shape: tuple[int, ...] | torch.Size) -> None:
    """Refuse an ``L2`` budget above ``sqrt(d)``, ``d`` the number of input values of one
    example of ``shape``: the diameter of [0, 1]^d, so a larger ball allows every input."""
    d = 1
    for s in shape:
        d *= int(s)
    if norm == "L2" and eps > d**0.5:
        raise InvalidArgumentError(
            f"eps={eps!r} under L2 exceeds sqrt({d}) = {d**0.5:.4g}, the largest distance between "
            f"two inputs of shape {tuple(int(s) for s in shape)} in [0, 1]: such a budget allows "
            "every input and means nothing.",
            argument="eps",
        )


def _one_of(names: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'``."""
    quoted = [f"'{n}'" for n in names]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _default_step(eps: float, steps: int) -> float:
    return 2.5 * eps / max(1, steps)


def _generator(x: torch.Tensor, generator: torch.Generator | None, seed: int) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator(device=x.device).manual_seed(seed)


def _random_delta(x: torch.Tensor, eps: float, norm: str, g: torch.Generator) -> torch.Tensor:
    """A uniform sample of the ε-ball (ℓ∞: a cube; ℓ2: direction × eps·u^(1/d))."""
    if norm == "Linf":
        u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return (2.0 * u - 1.0) * eps
    direction = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    flat = direction.flatten(1)
    d = flat.shape[1]
    radius = eps * torch.rand((x.shape[0], 1), generator=g, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(_TINY) * radius).view_as(x)


def _ascend(x: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return x + alpha * grad.sign()
    flat = grad.flatten(1)
    scale = alpha / flat.norm(dim=1).clamp_min(_TINY)
    return x + grad * scale.view(-1, *([1] * (grad.dim() - 1)))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ε-ball around ``x``, then clip to [0, 1] (clipping a point of the
    ℓ∞ cube or the ℓ2 ball towards [0, 1] never leaves the ball: [0, 1] contains ``x``)."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(_TINY)
        factor = (eps / norms).clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta).clamp_(0.0, 1.0)
