"""The adapter around pyautoattack 0.2.0: its attack objects for one model, configured as
AutoAttack's ``version="standard"`` configures them, run one batch at a time."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from robustprune._inputs import check_logits, first_forward
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError

__all__ = ["Ensemble", "AA_LOGGER", "sanity_checks"]

logger = logging.getLogger(__name__)

#: the logger pyautoattack writes to (at DEBUG)
AA_LOGGER = "auto-attack"


class Ensemble:
    """pyautoattack's attack objects for one model, configured as ``version="standard"``.

    Built from the first batch ``x`` (it tells the number of classes); its clean logits are
    kept in :attr:`first_logits` so that the first :meth:`run` need not recompute them."""

    def __init__(
        self,
        model: nn.Module,
        names: tuple[str, ...],
        *,
        norm: str,
        eps: float,
        seed: int,
        n_iter: int,
        device: torch.device,
        x: torch.Tensor,
    ) -> None:
        self.model = model
        self.names = names
        self.norm = norm
        self.eps = eps
        aa_logger = logging.getLogger(AA_LOGGER)
        with torch.no_grad():
            logits = first_forward(model, x, "robust_accuracy")
        self.first_logits: torch.Tensor | None = logits
        classes = _check_classes(logits, x.shape[0], names)
        #: the model's number of outputs
        self.classes = classes
        sanity_checks(model, x, logits, aa_logger)
        settings = dict(norm=norm, eps=eps, seed=seed, n_iter=n_iter, device=device,
                        targets=min(9, classes - 1), logger=aa_logger)
        self.attacks: dict[str, Any] = {name: _build_attack(name, model, **settings) for name in names}
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


def sanity_checks(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, log: logging.Logger) -> None:
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


def _check_classes(logits: Any, n: int, names: tuple[str, ...]) -> int:
    """The number of classes, refusing models and attack lists that do not fit."""
    classes = check_logits(logits, n, what="robust_accuracy's model", where="evaluation batch 1")
    if classes < 2:
        raise ModelNotSupportedError("robust_accuracy needs at least 2 classes.")
    if "apgd-dlr" in names and classes < 3:
        raise InvalidArgumentError("apgd-dlr needs at least 3 classes; use attacks=('apgd-ce',).")
    if any(n in names for n in ("apgd-t", "fab-t")) and classes < 4:
        raise InvalidArgumentError(
            f"apgd-t and fab-t need at least 4 classes (the model has {classes}); use "
            "attacks=('apgd-ce',) or ('apgd-ce', 'fab')."
        )
    return classes


def _build_attack(
    name: str, model: nn.Module, *, norm: str, eps: float, seed: int, n_iter: int,
    device: torch.device, targets: int, logger: logging.Logger,
) -> Any:
    """One pyautoattack attack object, with the settings of ``version="standard"``."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    if name in ("apgd-ce", "apgd-dlr"):
        return APGDAttack(
            model, n_iter=n_iter, norm=norm, n_restarts=1, eps=eps, seed=seed,
            loss="ce" if name == "apgd-ce" else "dlr", eot_iter=1, rho=0.75,
            device=device, logger=logger,
        )
    if name == "apgd-t":
        return APGDAttack_targeted(
            model, n_iter=n_iter, norm=norm, n_restarts=1, eps=eps, seed=seed,
            n_target_classes=targets, eot_iter=1, rho=0.75, device=device, logger=logger,
        )
    if name in ("fab", "fab-t"):
        return FABAttack_PT(
            model, norm=norm, n_restarts=1, n_iter=n_iter, eps=eps, seed=seed,
            targeted=name == "fab-t", n_target_classes=targets, device=device,
        )
    return SquareAttack(
        model, p_init=0.8, n_queries=5000, eps=eps, norm=norm, n_restarts=1,
        seed=seed, resc_schedule=False, device=device,
    )
