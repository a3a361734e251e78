"""Regularizers added to the training loss: ``loss = task_loss + reg(model)``.

Each regularizer is an ``nn.Module`` whose ``forward(model)`` returns a differentiable
scalar already multiplied by its ``weight``. By default it acts on every prunable layer
(:func:`robustprune.layers.prunable_layers`) except the classifier head and a first layer
that is a convolution; ``layers=`` (names or modules) overrides the selection. Weights are
matricized with rows = output units. Constructors refuse a weight that is not a finite
number >= 0 and a ``layers=`` that is empty or holds anything but names and modules;
``reg.check(model)`` refuses a model that lacks a selected layer without running anything
(call it before training).

- :class:`BetaDispersion` lowers the dispersion ``beta`` of the dominant rows (the paper's
  beta-control): it flattens the top of the row-norm profile without making it less
  compressible.
- :class:`Alignment` lowers the alignment of consecutive layers.
- :class:`NuclearNorm`, :class:`GroupLasso` and :class:`ScaleInvariantRowSparsity` are the
  compressibility-inducing regularizers the paper studies (spectral and neuron).
"""

from __future__ import annotations

import logging
import math
import numbers
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers import (
    LowRankLinear,
    classifier_head,
    consecutive_pairs,
    first_layer,
    is_prunable,
    matricize,
    prunable_layers,
)
from robustprune.metrics._checks import check_nonnegative

__all__ = [
    "LayerRegularizer",
    "BetaDispersion",
    "Alignment",
    "NuclearNorm",
    "GroupLasso",
    "ScaleInvariantRowSparsity",
    "default_layers",
    "REGULARIZERS",
]

logger = logging.getLogger(__name__)

LayerSpec = Sequence[str | nn.Module]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel / DistributedDataParallel / torch.compile wrapper."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return _unwrap(model.module)
    inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    return _unwrap(inner) if isinstance(inner, nn.Module) else model


def default_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every prunable layer except the classifier head and a first layer that is a conv."""
    model = _unwrap(model)
    head = classifier_head(model)
    first = first_layer(model)
    skip_first = first[1] if first is not None and isinstance(first[1], nn.Conv2d) else None
    return [(n, m) for n, m in prunable_layers(model) if m is not head and m is not skip_first]


class LayerRegularizer(nn.Module):
    """Base class: ``forward(model) = weight * sum over the selected layers of penalty(layer)``."""

    def __init__(self, weight: float, layers: LayerSpec | None = None) -> None:
        super().__init__()
        self.weight = _check_weight(weight)
        self.layers = _check_layer_spec(layers)

    def check(self, model: nn.Module) -> None:
        """Refuse a model this regularizer cannot act on (a layer of ``layers=`` that is not
        in it, or not a Linear/Conv2d/LowRankLinear), without running it: call it before
        training, so that the refusal comes before anything is changed."""
        self.selected(model)

    def selected(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of the layers this regularizer acts on in ``model``."""
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(
                f"A regularizer is called with the model (an nn.Module), got {type(model).__name__}.",
                argument="model",
            )
        model = _unwrap(model)
        if self.layers is None:
            return default_layers(model)
        by_module = {id(m): n for n, m in model.named_modules()}
        out = []
        for spec in self.layers:
            if isinstance(spec, nn.Module):
                if id(spec) not in by_module:
                    raise InvalidArgumentError(
                        f"A {type(spec).__name__} passed in layers= is not part of the model."
                    )
                name, module = by_module[id(spec)], spec
            else:
                try:
                    name, module = str(spec), model.get_submodule(str(spec))
                except AttributeError as exc:
                    raise InvalidArgumentError(
                        f"The model has no layer named '{spec}' (layers= takes names from "
                        "model.named_modules() or the modules themselves)."
                    ) from exc
            if not is_prunable(module):
                raise InvalidArgumentError(
                    f"Layer '{name}' is a {type(module).__name__}; regularizers act on Linear, "
                    "Conv2d and LowRankLinear layers."
                )
            if any(module is m for _, m in out):
                raise InvalidArgumentError(
                    f"Layer '{name}' is listed twice in layers= (by name or as a module); its penalty would "
                    "count twice. List each layer once.", argument="layers")
            out.append((name, module))
        return out

    def penalty(self, name: str, layer: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: nn.Module) -> torch.Tensor:
        layers = self.selected(model)
        if not layers:
            ref = next(_unwrap(model).parameters(), None)
            logger.debug("%s: no layer selected, penalty 0", type(self).__name__)
            return torch.zeros((), device=None if ref is None else ref.device)
        with _full_precision(layers[0][1]):
            total = torch.stack([self.penalty(n, m).float() for n, m in layers]).sum()
        return self.weight * total

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}" + ("" if self.layers is None else f", layers={len(self.layers)}")


class BetaDispersion(LayerRegularizer):
    """Beta-control: per layer, ``nu`` = row l2 norms, ``t`` = the top ``ceil(top * h)`` of
    them (at least 2); penalty ``Var(t / mean(t))`` (population variance; scale invariant),
    summed over layers. Zero when the dominant rows have equal norms, i.e. dispersion
    ``beta = 0``; layers with fewer than 2 rows contribute 0."""

    def __init__(self, weight: float, top: float = 0.05, layers: LayerSpec | None = None) -> None:
        super().__init__(weight, layers)
        if isinstance(top, bool) or not isinstance(top, numbers.Real) or not 0 < float(top) <= 1:
            raise InvalidArgumentError(f"top must be a fraction in (0, 1], got {top!r}.", argument="top")
        self.top = float(top)

    def penalty(self, name: str, layer: nn.Module) -> torch.Tensor:
        w = matricize(layer)
        h = w.shape[0]
        if h < 2:
            return w.new_zeros(())
        m = min(h, max(2, math.ceil(self.top * h)))
        t = torch.topk(torch.linalg.vector_norm(w, dim=1), m).values
        mean = t.mean()
        if mean.detach() == 0:  # all-zero rows are equal: no dispersion
            return (t * 0).sum()
        return ((t / mean - 1.0) ** 2).mean()  # mean(t / mean) == 1

    def extra_repr(self) -> str:
        return super().extra_repr() + f", top={self.top:g}"


class GroupLasso(LayerRegularizer):
    """Group lasso over output units: ``sum_i ||W_i||_2`` per layer, summed over layers
    (drives whole rows to zero: neuron compressibility)."""

    def penalty(self, name: str, layer: nn.Module) -> torch.Tensor:
        return torch.linalg.vector_norm(matricize(layer), dim=1).sum()


class ScaleInvariantRowSparsity(LayerRegularizer):
    """``||r||_1 / ||r||_2`` with ``r`` the row l2 norms, per layer, summed: a scale-invariant
    measure of how many rows carry the energy (the paper's row-sparsity regularizer)."""

    def penalty(self, name: str, layer: nn.Module) -> torch.Tensor:
        r = torch.linalg.vector_norm(matricize(layer), dim=1)
        return r.sum() / torch.linalg.vector_norm(r).clamp_min(torch.finfo(r.dtype).tiny)


class NuclearNorm(LayerRegularizer):
    """Nuclear norm ``||W||_* = sum_i sigma_i`` of each matricized weight, summed over layers
    (spectral compressibility).

    Computed from the Gram matrix of the smaller side, ``sigma_i^2 = eig(W W^T)`` (one
    ``eigvalsh`` of a ``min(h, d)``-square matrix instead of an SVD of ``W``: several times
    cheaper for conv weights), as ``sum_i sqrt(sigma_i^2 + tau)`` with
    ``tau = (1e-6 ||W||_F)^2`` (detached). The smoothing keeps the gradient
    ``sigma_i / sqrt(sigma_i^2 + tau) u_i v_i^T`` bounded where singular values vanish (the
    exact gradient ``U V^T`` is undefined there) and changes the value by at most
    ``sqrt(tau)`` per singular value."""

    def penalty(self, name: str, layer: nn.Module) -> torch.Tensor:
        w = matricize(layer)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        tau = ((1e-6 * torch.linalg.vector_norm(w.detach())) ** 2).clamp_min(1e-30)
        try:
            eig = torch.linalg.eigvalsh(gram).clamp_min(0)
        except torch.linalg.LinAlgError:
            # NaN or inf weights: the eigensolver does not converge. The penalty is NaN, as
            # BetaDispersion's is: fit's loss check then stops before the update and restores
            # the step's running statistics (TrainingDivergedError), one path for every regularizer
            return (w * math.nan).sum()
        return torch.sqrt(eig + tau).sum()


class Alignment(LayerRegularizer):
    """Alignment of consecutive layers: per pair ``(l, l+1)`` found by
    :func:`robustprune.layers.consecutive_pairs` (both layers selected),
    ``sigma_max(W^{l+1} W^l) / (sigma_max(W^{l+1}) sigma_max(W^l))``, summed over pairs.

    Each ``sigma_max`` uses persistent power-iteration vectors, as in
    ``torch.nn.utils.spectral_norm``: ``n_power_iterations`` steps per call (10 on first
    use) without gradient, then ``sigma = u^T M v`` so gradients flow through the Rayleigh
    quotients. Convolutions use their channel-mixing matrix ``sum over kernel positions of
    W`` (``out x in``, block-diagonal for grouped convs), a documented approximation of the
    operator; a Linear fed by a flattened ``C x s`` map sums its columns over the ``s``
    positions. Pairs whose shapes cannot be composed are skipped (logged once). The vectors
    live on this module (not in its ``state_dict``) and are re-initialized when a layer's
    shape changes, e.g. after pruning."""

    def __init__(self, weight: float, layers: LayerSpec | None = None, n_power_iterations: int = 1) -> None:
        super().__init__(weight, layers)
        n = n_power_iterations
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < 1:
            raise InvalidArgumentError(
                f"n_power_iterations must be a whole number >= 1, got {n!r}.", argument="n_power_iterations"
            )
        self.n_power_iterations = int(n)
        self._vectors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._pairs: tuple[weakref.ref[nn.Module], tuple[tuple[str, str], ...]] | None = None
        self._skipped: set[tuple[str, str]] = set()

    def pairs(self, model: nn.Module) -> tuple[tuple[str, str], ...]:
        """Names of the consecutive pairs this regularizer acts on (traced once per model)."""
        model = _unwrap(model)
        if self._pairs is None or self._pairs[0]() is not model:
            chosen = {n for n, _ in self.selected(model)}
            try:
                found = consecutive_pairs(model)
            except ModelNotSupportedError as exc:
                raise ModelNotSupportedError(
                    f"Alignment needs the model's consecutive layers: {exc}"
                ) from exc
            pairs = tuple((p.a, p.b) for p in found if p.a in chosen and p.b in chosen)
            self._pairs = (weakref.ref(model), pairs)
        return self._pairs[1]

    def check(self, model: nn.Module) -> None:
        """As :meth:`LayerRegularizer.check`, and the model must be traceable (its pairs)."""
        self.selected(model)
        self.pairs(model)

    def forward(self, model: nn.Module) -> torch.Tensor:
        inner = _unwrap(model)
        terms = []
        for a, b in self.pairs(inner):
            layer_a, layer_b = inner.get_submodule(a), inner.get_submodule(b)
            with _full_precision(layer_a):
                term = self._pair_term(a, layer_a, b, layer_b)
            if term is not None:
                terms.append(term)
        if not terms:
            ref = next(inner.parameters(), None)
            return torch.zeros((), device=None if ref is None else ref.device)
        return self.weight * torch.stack(terms).sum()

    def _pair_term(self, a: str, layer_a: nn.Module, b: str, layer_b: nn.Module) -> torch.Tensor | None:
        ma = _mixing_matrix(layer_a).float()
        mb = _mixing_matrix(layer_b).float()
        if mb.shape[1] != ma.shape[0]:
            if mb.shape[1] % ma.shape[0] == 0:  # Linear after flatten of a C x s map
                mb = mb.reshape(mb.shape[0], ma.shape[0], -1).sum(dim=2)
            else:
                if (a, b) not in self._skipped:
                    self._skipped.add((a, b))
                    logger.info("Alignment: skipping %s -> %s (shapes %s, %s)", a, b, tuple(ma.shape), tuple(mb.shape))
                return None
        sa = self._sigma(f"{a}|{tuple(ma.shape)}", lambda v: ma @ v, lambda u: ma.T @ u, ma.shape, ma.device)
        sb = self._sigma(f"{b}|{tuple(mb.shape)}", lambda v: mb @ v, lambda u: mb.T @ u, mb.shape, ma.device)
        sp = self._sigma(
            f"{a}->{b}|{tuple(mb.shape)}x{tuple(ma.shape)}",
            lambda v: mb @ (ma @ v),
            lambda u: ma.T @ (mb.T @ u),
            (mb.shape[0], ma.shape[1]),
            ma.device,
        )
        return sp / (sa * sb).clamp_min(torch.finfo(sp.dtype).tiny)

    def _sigma(
        self,
        key: str,
        fwd: Callable[[torch.Tensor], torch.Tensor],
        adj: Callable[[torch.Tensor], torch.Tensor],
        shape: tuple[int, int],
        device: torch.device,
    ) -> torch.Tensor:
        """``u^T M v`` after power iteration on the persistent ``(u, v)`` of ``key``."""
        state = self._vectors.get(key)
        steps = self.n_power_iterations
        if state is None or state[1].device != device:
            g = torch.Generator().manual_seed(len(self._vectors))
            v = torch.randn(shape[1], generator=g).to(device)
            state = (torch.zeros(shape[0], device=device), v / v.norm().clamp_min(1e-12))
            steps = max(steps, 10)
        u, v = state
        with torch.no_grad():
            for _ in range(steps):
                u = fwd(v)
                u = u / u.norm().clamp_min(1e-12)
                v = adj(u)
                v = v / v.norm().clamp_min(1e-12)
            u = fwd(v)
            u = u / u.norm().clamp_min(1e-12)
        self._vectors[key] = (u.detach(), v.detach())
        return torch.dot(u, fwd(v))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_power_iterations={self.n_power_iterations}"


def _check_weight(weight: object) -> float:
    """A regularizer's weight: a finite real number >= 0 (not a bool or a string); one
    message for every way it can be wrong."""
    try:
        return check_nonnegative(weight, "weight")
    except InvalidArgumentError:
        shown = repr(weight) if len(repr(weight)) <= 40 else repr(weight)[:40] + "..."
        raise InvalidArgumentError(f"weight must be a finite number >= 0, got {shown}.", argument="weight") from None


def _check_layer_spec(layers: object) -> tuple[str | nn.Module, ...] | None:
    """``layers=``: ``None`` (the default layers), or a non-empty sequence of names (str) and
    modules; a single name or module is a sequence of one."""
    if layers is None:
        return None
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise InvalidArgumentError(
            f"layers must be a list of layer names or modules, got {type(layers).__name__}.", argument="layers"
        )
    bad = [spec for spec in layers if not isinstance(spec, (str, nn.Module))]
    if bad:
        raise InvalidArgumentError(
            f"layers takes names from model.named_modules() (str) or the modules themselves, "
            f"got {bad[0]!r} ({type(bad[0]).__name__}).",
            argument="layers",
        )
    if not layers:
        raise InvalidArgumentError(
            "layers is empty: the regularizer would act on nothing. Pass layers=None for the "
            "default layers, or name at least one.",
            argument="layers",
        )
    return tuple(layers)


def _full_precision(layer: nn.Module) -> torch.autocast:
    """Autocast off on the layer's device: penalties (eigvalsh, norms) are computed in the
    parameters' own precision even inside an AMP training step."""
    return torch.autocast(device_type=next(layer.parameters()).device.type, enabled=False)


def _mixing_matrix(layer: nn.Module) -> torch.Tensor:
    """Linear: ``W``; Conv2d: ``sum over kernel positions of W`` (``out x in``,
    block-diagonal over groups); LowRankLinear: ``B @ A``."""
    if isinstance(layer, nn.Conv2d):
        w = layer.weight.sum(dim=(2, 3))  # out x in/groups
        if layer.groups == 1:
            return w
        blocks = w.reshape(layer.groups, layer.out_channels // layer.groups, -1)
        return torch.block_diag(*blocks.unbind(0))
    if isinstance(layer, (nn.Linear, LowRankLinear)):
        return matricize(layer)
    raise ModelNotSupportedError(f"Alignment cannot use a {type(layer).__name__} layer.")


#: the registry of regularizers by recipe name (``[[train.regularizers]] kind = "beta"``)
REGULARIZERS: dict[str, type[LayerRegularizer]] = {
    "beta": BetaDispersion,
    "alignment": Alignment,
    "nuclear": NuclearNorm,
    "group-lasso": GroupLasso,
    "row-sparsity": ScaleInvariantRowSparsity,
}
