"""Adversarial attacks: training attacks (PGD, FGSM-RS, TRADES) and the AutoAttack adapter.

>>> x_adv = pgd(model, x, y, eps=8 / 255)                          # PGD-10, Linf, random start
>>> result = robust_accuracy(model, loaders.test, eps=8 / 255, n_examples=1000)
>>> result.clean_accuracy, result.robust_accuracy, result.per_attack

Inputs live in [0, 1] (models normalize internally), so every budget is in input space:
an ℓ∞ budget ``eps`` bounds ``max_i |x'_i - x_i|``, an ℓ2 budget bounds ``||x' - x||_2``
per example. Every attack returns points that are inside the budget *and* inside [0, 1].

Training attacks never change the model's mode (the caller decides train or eval mode),
never accumulate gradients into the model's parameters, and draw their random starts
from their own :class:`torch.Generator`, so they leave the global RNG alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustprune import distributed
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError

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

logger = logging.getLogger(__name__)

Norm = Literal["Linf", "L2"]
#: the threat models: ℓ∞ and ℓ2 budgets in input space
NORMS = ("Linf", "L2")
_NORMS = NORMS
#: the training attacks of :class:`AdversarialConfig`
ADVERSARIAL_KINDS = ("pgd", "fgsm", "trades")
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
    """
    _check_budget(eps, norm, steps)
    x = x.detach()
    if eps == 0 or (steps == 0 and not random_start):
        return x.clone()
    alpha = _default_step(eps, steps) if step_size is None else float(step_size)
    if alpha < 0:
        raise InvalidArgumentError(f"step_size must be >= 0, got {step_size}.")
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
    if beta < 0:
        raise InvalidArgumentError(f"TRADES beta must be >= 0, got {beta}.")
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
    _check_budget(eps, norm, steps)
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

    kind: Literal["pgd", "fgsm", "trades"] = "pgd"
    norm: Norm = "Linf"
    eps: float
    steps: int = 10
    step_size: float | None = None
    beta: float = 6.0

    def __post_init__(self) -> None:
        if self.kind not in ADVERSARIAL_KINDS:
            raise InvalidArgumentError(
                f"Unknown adversarial training kind '{self.kind}'; use 'pgd', 'fgsm' or 'trades'.",
                argument="kind",
            )
        _check_budget(self.eps, self.norm, self.steps)
        if self.step_size is not None and not (
            isinstance(self.step_size, (int, float)) and not isinstance(self.step_size, bool)
            and 0 <= self.step_size < float("inf")
        ):
            raise InvalidArgumentError(
                f"step_size must be a finite number >= 0, got {self.step_size!r}.", argument="step_size"
            )
        if not (isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool)
                and 0 <= self.beta < float("inf")):
            raise InvalidArgumentError(f"TRADES beta must be a finite number >= 0, got {self.beta!r}.",
                                       argument="beta")


# --------------------------------------------------------------------------- AutoAttack adapter

#: attacks of ``pyautoattack`` (the official AutoAttack code) that the adapter can run
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
#: AutoAttack's ``version="standard"`` ensemble, in its order
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: every name ``robust_accuracy(attacks=...)`` accepts: the single attacks and "standard"
ATTACKS = (*AUTOATTACK_ATTACKS, "standard")

_AA_LOGGER = "auto-attack"


@dataclass(frozen=True)
class RobustResult:
    """Accuracy of a model under an AutoAttack ensemble on ``n`` examples.

    Attributes:
        clean_accuracy: fraction of the ``n`` examples classified correctly.
        robust_accuracy: fraction still classified correctly after every attack
            (a point counts as robust only if no attack in the ensemble fools it).
        per_attack: robust accuracy after each attack in order, cumulative (as AutoAttack
            reports it): ``per_attack[attacks[-1]] == robust_accuracy``.
        norm, eps, attacks, n_iter, seed, batch_size: the settings used.
        n: number of examples evaluated.
    """

    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, float]
    norm: str
    eps: float
    attacks: tuple[str, ...]
    n_iter: int
    seed: int
    n: int
    batch_size: int
    version: str = "custom"
    library: str = "pyautoattack==0.2.0"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "per_attack": dict(self.per_attack),
            "norm": self.norm,
            "eps": self.eps,
            "attacks": list(self.attacks),
            "n_iter": self.n_iter,
            "seed": self.seed,
            "n": self.n,
            "batch_size": self.batch_size,
            "version": self.version,
            "library": self.library,
        }

    def __str__(self) -> str:
        steps = ", ".join(f"{k} {v:.2%}" for k, v in self.per_attack.items())
        return (
            f"clean {self.clean_accuracy:.2%}, robust {self.robust_accuracy:.2%} "
            f"({self.norm} eps={self.eps:g}, n={self.n}; {steps})"
        )


def robust_accuracy(
    model: nn.Module,
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    *,
    norm: Norm = "Linf",
    eps: float,
    attacks: Sequence[str] | str = ("apgd-ce", "apgd-t"),
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    n_iter: int = 100,
    progress: bool = True,
    state_path: str | os.PathLike[str] | None = None,
) -> RobustResult:
    """Robust accuracy under the official AutoAttack attacks (``pyautoattack==0.2.0``).

    ``robust = (1/n) Σ_i 1[ f(x_i) = y_i  and  f(A_j(x_i)) = y_i for every attack j ]``:
    each attack runs only on the points that are still classified correctly (first the
    clean ones, then those that survived the earlier attacks), so
    ``robust_accuracy ≤ per_attack[...] ≤ clean_accuracy`` by construction.

    The attacks are pyautoattack's own classes, configured as AutoAttack's
    ``version="standard"`` configures them (APGD-CE: 1 restart; APGD-T and FAB-T: 1 restart
    and ``min(9, C-1)`` target classes; Square: 5,000 queries), with ``seed`` passed to
    every attack of every batch, as ``AutoAttack.run_standard_evaluation`` does. The data
    is cut into batches of exactly ``batch_size`` examples in order, and every batch is
    attacked by the whole ensemble before the next one; the result therefore does not
    depend on how ``data`` was batched or how many processes share the work.

    The model is put in eval mode (its previous mode is restored afterwards), moved to
    ``device`` and run in fp32 (autocast disabled); the global RNG (CPU and CUDA) is
    restored afterwards, since the attacks reseed it. Under ``torchrun`` the batches are
    shared round-robin between the ranks and the counts are summed, so every rank returns
    the same result.

    Args:
        model: maps inputs in [0, 1] to logits (a DDP wrapper is unwrapped).
        data: a DataLoader (or any iterable of ``(x, y)`` batches), or a tuple of tensors
            ``(x, y)``. Use an unshuffled loader so that ``n_examples`` picks a fixed subset.
        norm: ``"Linf"`` or ``"L2"``.
        eps: the budget in input space, e.g. 8/255 (CIFAR Linf), 0.5 (L2), 0.3 (MNIST).
        attacks: names from :data:`AUTOATTACK_ATTACKS` in the order to run them, or
            ``"standard"`` for :data:`STANDARD_ATTACKS`.
        n_examples: evaluate the first ``n_examples`` only (default: all of ``data``).
        batch_size: examples per attack batch.
        seed: the attacks' seed.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        n_iter: iterations of the APGD and FAB attacks (AutoAttack uses 100).
        progress: a tqdm bar over batches (rank 0 only).
        state_path: a JSON file that records the counts of every finished batch (written
            atomically by rank 0); a later call with the same settings and model skips the
            batches it lists, so an interrupted evaluation resumes where it stopped.
    """
    names, version = _resolve_attacks(attacks)
    _check_budget(eps, norm, 0)
    if norm not in ("Linf", "L2"):
        raise InvalidArgumentError(f"robust_accuracy supports norm 'Linf' or 'L2', got '{norm}'.")
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}.")
    if n_examples is not None and n_examples < 1:
        raise InvalidArgumentError(f"n_examples must be >= 1 or None, got {n_examples}.")
    if n_iter < 1:
        raise InvalidArgumentError(f"n_iter must be >= 1, got {n_iter}.")

    dev = distributed.resolve_device(device)
    ctx = distributed.setup(dev)
    net = distributed.unwrap(model)
    _check_fp32(net)
    if ctx.distributed and _is_shuffled(data):
        raise InvalidArgumentError(
            "robust_accuracy under torchrun needs an unshuffled loader (every rank must see "
            "the same examples in the same order); pass the test loader or shuffle=False."
        )
    if _is_shuffled(data):
        logger.warning("robust_accuracy got a shuffled loader: the evaluated subset changes per run.")

    was_training = net.training
    net.eval().to(dev)
    # counts: [n, clean correct, robust after attack 1, ..., robust after attack k]
    counts = torch.zeros(2 + len(names), dtype=torch.float64)
    cuda_devices = [dev] if dev.type == "cuda" else []
    ensemble: _Ensemble | None = None
    settings = {
        "norm": norm, "eps": float(eps), "attacks": list(names), "n_iter": n_iter, "seed": seed,
        "batch_size": batch_size, "n_examples": n_examples, "model": _checksum(net),
    }
    state = _EvalState(state_path, settings, ctx)
    bar = _progress_bar(data, batch_size, n_examples, enabled=progress and ctx.is_main)
    try:
        with torch.random.fork_rng(devices=cuda_devices), torch.autocast(dev.type, enabled=False):
            for index, (x, y) in enumerate(rebatch(data, batch_size, n_examples)):
                if bar is not None:
                    bar.update(1)
                if index % ctx.world_size == ctx.rank and index not in state.done:
                    x = x.to(dev, torch.float32, non_blocking=True)
                    y = y.to(dev, torch.long, non_blocking=True)
                    if ensemble is None:
                        ensemble = _Ensemble(net, names, norm, float(eps), seed, n_iter, dev, x)
                        batch_counts = ensemble.run(x, y, ensemble.first_logits)
                        ensemble.first_logits = None
                    else:
                        batch_counts = ensemble.run(x, y)
                    counts += batch_counts
                    state.record(index, batch_counts)
                if (index + 1) % ctx.world_size == 0:
                    state.sync()
            state.sync()
    finally:
        if bar is not None:
            bar.close()
        net.train(was_training)
    if ctx.is_main:
        counts += state.resumed_counts(len(counts))
    counts = distributed.all_reduce_sum(counts.to(_reduce_device(dev, ctx)), ctx).cpu()
    n = int(counts[0].item())
    if n == 0:
        raise InvalidArgumentError("robust_accuracy got no examples; check data and n_examples.")
    per_attack = {name: float(counts[2 + j] / n) for j, name in enumerate(names)}
    clean = float(counts[1] / n)
    robust = per_attack[names[-1]] if names else clean
    assert robust <= clean, "robust accuracy exceeds clean accuracy"
    return RobustResult(
        clean_accuracy=clean,
        robust_accuracy=robust,
        per_attack=per_attack,
        norm=norm,
        eps=float(eps),
        attacks=names,
        n_iter=n_iter,
        seed=seed,
        n=n,
        batch_size=batch_size,
        version=version,
    )


class _Ensemble:
    """pyautoattack's attack objects for one model, configured as ``version="standard"``."""

    def __init__(
        self,
        model: nn.Module,
        names: tuple[str, ...],
        norm: str,
        eps: float,
        seed: int,
        n_iter: int,
        device: torch.device,
        x: torch.Tensor,
    ) -> None:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from pyautoattack.fab_pt import FABAttack_PT
        from pyautoattack.square import SquareAttack

        self.model = model
        self.names = names
        self.norm = norm
        self.eps = eps
        aa_logger = logging.getLogger(_AA_LOGGER)
        with torch.no_grad():
            logits = model(x)
        self.first_logits: torch.Tensor | None = logits
        if logits.ndim != 2:
            raise ModelNotSupportedError(
                f"robust_accuracy needs a classifier returning (N, classes) logits, got shape "
                f"{tuple(logits.shape)}."
            )
        classes = int(logits.shape[1])
        if classes < 2:
            raise ModelNotSupportedError("robust_accuracy needs at least 2 classes.")
        if "apgd-dlr" in names and classes < 3:
            raise InvalidArgumentError("apgd-dlr needs at least 3 classes; use attacks=('apgd-ce',).")
        if any(n in names for n in ("apgd-t", "fab-t")) and classes < 4:
            raise InvalidArgumentError(
                f"apgd-t and fab-t need at least 4 classes (the model has {classes}); use "
                "attacks=('apgd-ce',) or ('apgd-ce', 'fab')."
            )
        targets = min(9, classes - 1)
        _sanity_checks(model, x, logits, aa_logger)

        self.attacks: dict[str, Any] = {}
        for name in names:
            if name in ("apgd-ce", "apgd-dlr"):
                attack: Any = APGDAttack(
                    model, n_iter=n_iter, norm=norm, n_restarts=1, eps=eps, seed=seed,
                    loss="ce" if name == "apgd-ce" else "dlr", eot_iter=1, rho=0.75,
                    device=device, logger=aa_logger,
                )
            elif name == "apgd-t":
                attack = APGDAttack_targeted(
                    model, n_iter=n_iter, norm=norm, n_restarts=1, eps=eps, seed=seed,
                    n_target_classes=targets, eot_iter=1, rho=0.75, device=device,
                    logger=aa_logger,
                )
            elif name in ("fab", "fab-t"):
                attack = FABAttack_PT(
                    model, norm=norm, n_restarts=1, n_iter=n_iter, eps=eps, seed=seed,
                    targeted=name == "fab-t", n_target_classes=targets, device=device,
                )
            else:
                attack = SquareAttack(
                    model, p_init=0.8, n_queries=5000, eps=eps, norm=norm, n_restarts=1,
                    seed=seed, resc_schedule=False, device=device,
                )
            self.attacks[name] = attack
        self.seed = seed

    def run(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Counts ``[n, clean correct, robust after each attack]`` on one batch (``logits``:
        the clean logits of ``x`` when already computed)."""
        counts = torch.zeros(2 + len(self.names), dtype=torch.float64)
        if logits is None:
            with torch.no_grad():
                logits = self.model(x)
        robust = logits.argmax(1) == y
        counts[0] = x.shape[0]
        counts[1] = robust.sum().item()
        for j, name in enumerate(self.names):
            idx = robust.nonzero().flatten()
            if idx.numel() > 0:
                attack = self.attacks[name]
                attack.seed = self.seed  # as AutoAttack does for every batch
                x_adv = attack.perturb(x[idx], y[idx])
                with torch.no_grad():
                    fooled = self.model(x_adv).argmax(1) != y[idx]
                self._check_budget(x_adv.detach()[fooled], x[idx][fooled], name)
                robust[idx[fooled]] = False
            counts[2 + j] = robust.sum().item()
        return counts

    def _check_budget(self, x_adv: torch.Tensor, x: torch.Tensor, name: str) -> None:
        if x_adv.numel() == 0:
            return
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if self.norm == "Linf" else delta.norm(dim=1)
        worst = float(size.max())
        outside = float(torch.relu(-x_adv).amax() + torch.relu(x_adv - 1).amax())
        if worst > self.eps * (1 + 1e-4) + 1e-6 or outside > 1e-6:
            logger.warning(
                "%s returned points outside the budget (max %s perturbation %.6g > eps %.6g, "
                "or outside [0, 1] by %.3g)", name, self.norm, worst, self.eps, outside,
            )


class _EvalState:
    """Per-batch counts of a robust evaluation kept in a JSON file, so an interrupted
    evaluation resumes where it stopped (AutoAttack's own ``state_path`` is unreliable).
    :meth:`sync` is collective: every rank calls it at the same batch indices."""

    def __init__(
        self, path: str | os.PathLike[str] | None, settings: dict[str, Any],
        ctx: distributed.DistContext,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.settings = settings
        self.ctx = ctx
        self.done: dict[int, list[float]] = {}
        self.loaded: dict[int, list[float]] = {}
        self.pending: dict[int, list[float]] = {}
        if self.path is None or not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            saved_settings, done = saved["settings"], saved["done"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgumentError(
                f"{self.path} is not a robust_accuracy state file ({exc}); delete it."
            ) from exc
        if saved_settings != settings:
            diff = sorted(k for k in set(saved_settings) | set(settings)
                          if saved_settings.get(k) != settings.get(k))
            raise InvalidArgumentError(
                f"The evaluation state {self.path} was written with other settings or another "
                f"model (differs in: {', '.join(diff)}); use another state_path or delete it."
            )
        self.loaded = {int(k): list(v) for k, v in done.items()}
        self.done = dict(self.loaded)

    def record(self, index: int, counts: torch.Tensor) -> None:
        if self.path is not None:
            self.pending[index] = [float(c) for c in counts]

    def sync(self) -> None:
        if self.path is None:
            return
        for part in distributed.all_gather_objects(self.pending, self.ctx):
            self.done.update(part)
        self.pending = {}
        if self.ctx.is_main:
            payload = {"format": 1, "settings": self.settings,
                       "done": {str(k): v for k, v in sorted(self.done.items())}}
            _atomic_write_text(self.path, json.dumps(payload))

    def resumed_counts(self, size: int) -> torch.Tensor:
        """The summed counts of the batches finished by an earlier call."""
        total = torch.zeros(size, dtype=torch.float64)
        for counts in self.loaded.values():
            total += torch.tensor(counts, dtype=torch.float64)
        return total


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _checksum(model: nn.Module) -> list[float]:
    """A cheap fingerprint of the weights: parameter count and the sums of |w| and w."""
    with torch.no_grad():
        params = [p.detach().double() for p in model.parameters()]
        return [
            float(sum(p.numel() for p in params)),
            round(float(sum(p.abs().sum() for p in params)), 6),
            round(float(sum(p.sum() for p in params)), 6),
        ]


def _sanity_checks(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, log: logging.Logger) -> None:
    """AutoAttack's checks (``pyautoattack.checks``), with two forward passes instead of six:
    a model whose outputs change between calls (a randomized defence), or whose outputs
    look like probabilities instead of logits, makes gradient attacks unreliable."""
    with torch.no_grad():
        again = model(x)
    unit = lambda t: t / (t.flatten(1).norm(dim=1, keepdim=True) + 1e-10)  # noqa: E731
    if float((unit(again) - unit(logits)).flatten(1).norm(dim=1).max()) > 1e-4:
        log.warning(
            "The model's outputs change between two calls on the same input: it seems to be a "
            "randomized defence, for which AutoAttack needs version='rand' (EOT); the robust "
            "accuracy reported here is not reliable."
        )
    if bool(
        (logits.max() < 1 + 1e-5) & (logits.min() > -1e-5) & ((logits.sum(-1) - 1).abs() < 1e-5).all()
    ):
        log.warning(
            "The model's outputs look like probabilities: pass a model that returns logits, "
            "otherwise the attacks' losses saturate and robust accuracy is overestimated."
        )


def _resolve_attacks(attacks: Sequence[str] | str) -> tuple[tuple[str, ...], str]:
    if isinstance(attacks, str):
        if attacks == "standard":
            return STANDARD_ATTACKS, "standard"
        attacks = (attacks,)
    names = tuple(attacks)
    unknown = [a for a in names if a not in AUTOATTACK_ATTACKS]
    if unknown or not names:
        raise InvalidArgumentError(
            f"Unknown attack(s) {unknown or '(none given)'}; choose from "
            f"{', '.join(AUTOATTACK_ATTACKS)} or attacks='standard'."
        )
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"attacks lists an attack twice: {list(names)}.")
    return names, "standard" if names == STANDARD_ATTACKS else "custom"


def _check_fp32(model: nn.Module) -> None:
    low = {p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    if low:
        raise InvalidArgumentError(
            f"robust_accuracy evaluates in fp32 but the model has {sorted(map(str, low))} "
            "parameters; call model.float() first."
        )


def _is_shuffled(data: Any) -> bool:
    sampler = getattr(data, "sampler", None)
    return isinstance(sampler, torch.utils.data.RandomSampler)


def _reduce_device(device: torch.device, ctx: distributed.DistContext) -> torch.device:
    """NCCL reduces CUDA tensors, gloo CPU tensors."""
    if ctx.distributed and torch.distributed.get_backend() == "nccl":
        return device
    return torch.device("cpu")


def _progress_bar(data: Any, batch_size: int, n_examples: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = _num_examples(data)
    if n_examples is not None:
        total = n_examples if total is None else min(total, n_examples)
    batches = None if total is None else math.ceil(total / batch_size)
    return tqdm(total=batches, desc="robust accuracy", unit="batch", leave=False)


def _num_examples(data: Any) -> int | None:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return int(data[0].shape[0])
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None  # type: ignore[arg-type]
    except TypeError:
        return None


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x, y
    raise InvalidArgumentError(
        "Expected batches of (inputs, labels) tensors, got "
        f"{type(batch).__name__}; wrap the data in a DataLoader over a TensorDataset."
    )


def rebatch(
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor], batch_size: int, n_examples: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(x, y)`` batches of exactly ``batch_size`` examples (the last may be
    smaller) from a loader of ``(x, y)`` batches or from a tuple of tensors, stopping after
    ``n_examples``. The cut does not depend on how ``data`` itself is batched."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = _split_batch(data)
        if x.shape[0] != y.shape[0]:
            raise InvalidArgumentError(
                f"x and y have different lengths ({x.shape[0]} and {y.shape[0]})."
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
    for batch in data:
        x, y = _split_batch(batch)
        if n_examples is not None:
            x, y = x[: n_examples - seen], y[: n_examples - seen]
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


# --------------------------------------------------------------------------- helpers


def _check_budget(eps: float, norm: str, steps: int) -> None:
    if norm not in _NORMS:
        raise InvalidArgumentError(f"Unknown norm '{norm}'; use 'Linf' or 'L2'.", argument="norm")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or eps == float("inf"):
        raise InvalidArgumentError(f"eps must be a finite number >= 0, got {eps!r}.", argument="eps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InvalidArgumentError(f"steps must be an integer >= 0, got {steps!r}.", argument="steps")


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
