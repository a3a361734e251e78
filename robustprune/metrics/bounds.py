"""Lipschitz, gap and certification bounds (DESIGN.md, "Lipschitz bound", "Gap bound").

Naive bound ``prod_l ||W^l||_p`` (always valid); aligned bound: layers grouped in disjoint
consecutive pairs, each contributing ``A_p(l) ||W^{l+1}||_p ||W^l||_p`` (an upper bound with
the exact max over masks, an estimate with data masks); gap bound
``factor * delta * L_p(Phi) * ||C||_(p->p)``, the factor set by the head's loss (1 for a
binary logistic head, paper Corollary 3.3; 2 in l-infinity and sqrt(2) in l2 for a K-class
softmax cross-entropy head, since ``||softmax - e_y||_1 <= 2``); certified fraction from
logit margins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from robustprune.errors import InvalidArgumentError
from robustprune.metrics._checks import (
    as_real_tensor,
    check_budget,
    check_count,
    check_nonnegative,
    check_norm,
    check_real,
    check_reals,
)

__all__ = [
    "naive_lipschitz_bound",
    "aligned_lipschitz_bound",
    "gap_bound",
    "gap_factor",
    "head_loss",
    "HEAD_LOSSES",
    "logit_margins",
    "certified_fraction",
]


def naive_lipschitz_bound(norms: Sequence[float], between: Sequence[float] | None = None) -> float:
    """``L_naive = prod_l ||W^l||_p`` (times the Lipschitz factors ``between[l]`` of the ops
    after layer ``l``, all 1 for ReLU, pooling and flattening): always a valid upper bound."""
    values = _check_norms(norms)
    result = math.prod(values)
    return float(result * math.prod(_check_between(between, len(values))))


def aligned_lipschitz_bound(
    norms: Sequence[float],
    alignments: Sequence[float | None],
    between: Sequence[float] | None = None,
) -> float:
    """Layers grouped in disjoint consecutive pairs (1, 2), (3, 4), ...; each pair contributes
    ``A_p(l) ||W^{l+1}||_p ||W^l||_p`` and an unpaired last layer its own norm.

    ``alignments[l]`` is ``A_p`` of layers ``l`` and ``l + 1`` (only even ``l`` are used; the
    others may be ``None``); it already includes the ops between the pair, so ``between[l]``
    enters only for the gaps between pairs and after the last layer. With the exact max over
    masks this is an upper bound; with data masks it is an estimate."""
    values = _check_norms(norms)
    factors = _check_between(between, len(values))
    if isinstance(alignments, (str, bytes)) or not isinstance(alignments, (list, tuple)):
        raise InvalidArgumentError(
            f"alignments must be a list (one A_p per consecutive pair), got {type(alignments).__name__}.",
            argument="alignments")
    if len(alignments) != max(0, len(values) - 1):
        raise InvalidArgumentError(
            f"alignments must have one entry per consecutive pair ({len(values) - 1}), got "
            f"{len(alignments)}."
        )
    result = 1.0
    for i in range(0, len(values), 2):
        if i + 1 < len(values):
            a = alignments[i]
            if a is None:
                raise InvalidArgumentError(f"alignment of pair ({i}, {i + 1}) is missing (None).", argument="alignments")
            value = check_real(a, f"alignment of pair ({i}, {i + 1})")
            if not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"alignment of pair ({i}, {i + 1}) is invalid: {a}.", argument="alignments")
            result *= value * values[i] * values[i + 1]
            gap = i + 1
        else:
            result *= values[i]
            gap = i
        if gap < len(factors):
            result *= factors[gap]
    return float(result)


#: the heads whose gap bound is known: what each one's bound says
HEAD_LOSSES: dict[str, str] = {
    "logistic": "binary logistic head (one output): Delta_p <= delta L ||c||_q (Corollary 3.3)",
    "softmax": (
        "K-class softmax cross-entropy head: Delta_inf <= 2 delta L ||C||_(inf->inf), "
        "Delta_2 <= sqrt(2) delta L ||C||_2 (||softmax - e_y||_1 <= 2)"
    ),
}


def head_loss(num_outputs: int) -> str:
    """The loss a head of ``num_outputs`` logits is trained with: ``"logistic"`` for one
    output (binary logistic regression), ``"softmax"`` (cross-entropy) for two or more."""
    return "logistic" if check_count(num_outputs, "num_outputs") == 1 else "softmax"


def gap_factor(head: str, p: str | float = "2") -> float:
    """The factor of the gap bound for the head's loss and norm ``p``: 1 for a binary
    logistic head; for a softmax cross-entropy head ``||softmax - e_y||_1 <= 2`` gives 2 in
    l-infinity (Hoelder with the l1 norm) and ``sqrt(2)`` in l2 (``||softmax - e_y||_2 <= sqrt(2)``)."""
    if not isinstance(head, str) or head not in HEAD_LOSSES:
        raise InvalidArgumentError(f"head must be one of {sorted(HEAD_LOSSES)}, got {head!r}.", argument="head")
    norm = check_norm(p)
    if head == "logistic":
        return 1.0
    return 2.0 if norm == "inf" else math.sqrt(2.0)


def gap_bound(
    delta: float, lipschitz: float, head_norm: float, *, head: str = "logistic", p: str | float = "2"
) -> float:
    """Adversarial gap bound ``Delta_p <= factor * delta * L_p(Phi) * ||C||_(p->p)``.

    ``head="logistic"`` (the default): the paper's Corollary 3.3 for a binary logistic head
    ``c`` (factor 1, ``||c||_(p->p)`` is the dual norm ``||c||_q``). ``head="softmax"``: a
    K-class softmax cross-entropy head ``C``, whose loss gradient ``softmax - e_y`` has
    ``||.||_1 <= 2``: factor 2 for ``p="inf"``, ``sqrt(2)`` for ``p="2"``
    (:func:`gap_factor`; use :func:`head_loss` to pick ``head`` from the number of logits)."""
    return gap_factor(head, p) * check_budget(delta) * check_nonnegative(lipschitz, "lipschitz") * check_nonnegative(
        head_norm, "head_norm")


def logit_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y(x) - max_{j != y} f_j(x)`` per sample (negative when misclassified)."""
    logits = as_real_tensor(logits, "logits").detach().to(torch.float64)
    labels = as_real_tensor(labels, "labels")
    if labels.is_floating_point():
        raise InvalidArgumentError(
            f"labels must be integer class indices, got a {labels.dtype} tensor (use labels.long() if "
            "they are whole numbers).", argument="labels")
    labels = labels.to(device=logits.device, dtype=torch.long)
    if not bool(torch.isfinite(logits).all()):
        raise InvalidArgumentError("logits contain NaN or infinite values.", argument="logits")
    if logits.ndim != 2 or logits.shape[1] < 2 or labels.shape != logits.shape[:1]:
        raise InvalidArgumentError(
            f"logits must be (N, C>=2) with labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise InvalidArgumentError(f"labels must be in [0, {logits.shape[1] - 1}].")
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def certified_fraction(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    delta: float,
    lipschitz: float,
    head_norm: float,
) -> float:
    """Fraction of points whose logit margin exceeds ``2 * delta * L * ||C||_(p->p)``.

    With a valid (naive) ``L`` of the encoder and the head's operator norm, no perturbation
    of size ``delta`` can change the logits by more than ``delta L ||C||`` in l-infinity, so
    these points are provably robust: the fraction never exceeds robust accuracy."""
    budget = check_budget(delta)
    lip, head = check_nonnegative(lipschitz, "lipschitz"), check_nonnegative(head_norm, "head_norm")
    margins = logit_margins(logits, labels)
    if margins.numel() == 0:
        raise InvalidArgumentError("certified_fraction needs at least one sample.")
    # each logit moves by at most delta L ||C||, so a margin changes by at most twice that
    threshold = 2.0 * budget * lip * head
    return float((margins > threshold).double().mean())


# --------------------------------------------------------------------------- checks


def _check_norms(norms: Sequence[float], what: str = "layer norms", allow_empty: bool = False) -> list[float]:
    values = check_reals(norms, what, allow_empty=allow_empty)
    if any(not math.isfinite(n) or n < 0 for n in values):
        raise InvalidArgumentError(f"{what} must be finite and non-negative, got {values}.")
    return values


def _check_between(between: Sequence[float] | None, n_layers: int) -> list[float]:
    if between is None:
        return []
    values = _check_norms(between, "between-layer Lipschitz factors", allow_empty=True)
    if len(values) not in (max(0, n_layers - 1), n_layers):
        raise InvalidArgumentError(
            f"between must have one factor per gap between layers ({n_layers - 1}) or one "
            f"more for the ops after the last layer ({n_layers}), got {len(values)}."
        )
    return values
