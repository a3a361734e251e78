"""Spectral pruning: replace a layer by its ε-truncated SVD where that saves parameters.

For a layer with matricized weight ``W = U diag(σ) V^T`` (rows = output units, a Conv2d
``(out, in, kh, kw)`` as ``out x (in*kh*kw)``) the pruner keeps rank

    r = k_2(σ, ε) = min{r >= 1 : ||W - W_r||_F / ||W||_F <= ε}      (Eckart–Young)

and replaces the layer by its rank-r factorization (:mod:`robustprune.pruners.factorize`:
a :class:`~robustprune.layers.LowRankLinear`, or a kxk convolution to rank r followed by a
1x1 convolution), only where the factors have fewer parameters than the layer. The
factorized layer computes exactly the rank-r truncation ``W_r x + b``. Grouped and
depthwise convolutions are kept dense. σ comes from :func:`robustprune.metrics.singular_values`,
the same computation :func:`robustprune.analyze` reports.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustprune._inputs import Inputs, shape_list, to_meta
from robustprune._progress import bar as progress_bar
from robustprune.errors import InvalidArgumentError, PruningError
from robustprune.layers import LowRankLinear, get_submodule_parent, matricize
from robustprune.metrics import dispersion, k_for_eps, relative_residual, singular_values
from robustprune.pruners._checks import check_globs_match, eps_setting, first_line, match_eps
from robustprune.pruners.base import Pruner
from robustprune.pruners.counting import (
    counted_forward,
    dense_count,
    output_signature,
    prefer_meta,
    structural_clone,
)
from robustprune.pruners.factorize import factorized_layer, saves_params, svd
from robustprune.pruners.history import replay_spectral_step, spectral_step
from robustprune.pruners.plan import GroupPlan, Plan, PruningReport
from robustprune.pruners.rules import residual_breakpoints
from robustprune.pruners.search import solve_target_macs
from robustprune.pruners.support import tied_parameters

# factorized_layer and replay_spectral_step are re-exported from their modules
__all__ = ["SpectralPruner", "factorized_layer", "replay_spectral_step"]


@dataclass
class _Layer:
    name: str
    sigma: torch.Tensor  # float64, descending


class SpectralPruner(Pruner):
    """Factorize every Linear and (ungrouped) Conv2d to rank ``k_2(σ, ε)`` where it saves
    parameters.

    Args:
        eps: relative Frobenius residual per layer, in (0, 1), or ``{module-name-glob: ε}``
            (unmatched layers stay dense).
        ignored_layers: modules (or names) never factorized, besides the classifier head.
        target_macs: instead of ``eps``, the fraction of the original MACs to keep; the
            single global ε is solved to within ``macs_tolerance``.
    """

    method = "spectral"
    kind = "rank"

    def __init__(
        self,
        eps: float | Mapping[str, float] | None = None,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        target_macs: float | None = None,
        *,
        macs_tolerance: float = 0.01,
        progress: bool = False,
    ) -> None:
        super().__init__(ignored_layers=ignored_layers, target_macs=target_macs,
                         macs_tolerance=macs_tolerance, progress=progress)
        if (eps is None) == (target_macs is None):
            raise InvalidArgumentError(
                "Give exactly one of eps (the relative Frobenius residual per layer, e.g. 0.05) "
                f"and target_macs; got eps={eps!r}, target_macs={target_macs!r}."
            )
        self.eps = eps_setting(eps)

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "target_macs": self.target_macs}

    # plan / apply ---------------------------------------------------------------------

    def plan(self, model: nn.Module, example_inputs: Inputs | None = None) -> Plan:
        inputs = self._resolve_inputs(model, example_inputs)
        ignored = self._ignored_names(model)
        macs, params, signature = dense_count(model, inputs)
        layers = self._decompose(model, ignored)
        check_globs_match(self.eps, [(layer.name,) for layer in layers])
        macs_planned = None
        if self.target_macs is None:
            eps = self.eps
        elif self.target_macs >= 1 or not layers:  # keep every MAC: nothing is factorized
            eps, macs_planned = 0.0, macs
        else:
            def kept_fraction(e: float) -> float:
                ranks = self._ranks(model, layers, e)
                return _factorized_count(model, inputs, ranks)[0] / macs

            eps, fraction = solve_target_macs(
                residual_breakpoints((layer.sigma for layer in layers), 2), kept_fraction,
                target=self.target_macs, tolerance=self.macs_tolerance, pruner=type(self).__name__,
                method=self.method, progress=self.progress,
            )
            macs_planned = int(round(fraction * macs))
        groups = tuple(
            self._group_plan(model, layer, eps) if eps else _dense(layer, "target_macs=1: kept dense")
            for layer in layers
        )
        setting = {**self.settings(), "ignored_layers": ignored, "example_input_shape": shape_list(inputs)}
        if self.target_macs is not None:
            setting["eps"] = float(eps)
        return Plan(
            method=self.method,
            kind=self.kind,
            setting=setting,
            groups=groups,
            macs_before=macs,
            params_before=params,
            macs_planned=macs_planned,
            example_inputs=inputs,
            output_signature=signature,
        )

    def apply(self, model: nn.Module, plan: Plan) -> PruningReport:
        start = time.perf_counter()
        if not isinstance(plan, Plan) or plan.kind != "rank":
            raise InvalidArgumentError("SpectralPruner.apply needs a Plan made by SpectralPruner.plan.")
        ranks = {g.name: g.kept for g in plan.groups if _factorized(g)}
        modules = dict(model.named_modules())
        for name, rank in ranks.items():
            layer = modules.get(name)
            if not isinstance(layer, (nn.Linear, nn.Conv2d)) or rank > min(matricize(layer).shape):
                raise PruningError(
                    f"The plan factorizes '{name}' to rank {rank}, but this model's '{name}' is "
                    f"{type(layer).__name__ if layer is not None else 'missing'}; call plan() again on "
                    "the current model."
                )
        try:
            macs_after, params_after, signature = _factorized_count(model, plan.example_inputs, ranks)
        except Exception as exc:
            raise PruningError(
                f"The factorized model fails its forward pass ({type(exc).__name__}: {first_line(exc)}); "
                "the model was left unchanged. Exclude the affected layers with ignored_layers."
            ) from exc
        if plan.output_signature is not None and signature != plan.output_signature:
            raise PruningError(
                f"Factorizing changed the output shape from {plan.output_signature} to {signature}; "
                "the model was left unchanged."
            )
        replacements = {}
        for name, rank in progress_bar(ranks.items(), desc="spectral: factorize", enabled=self.progress, leave=False):
            layer = modules[name]
            replacements[name] = factorized_layer(layer, rank, *svd(layer))
        _replace_all(model, replacements)
        step = spectral_step(plan.method, ranks)
        return self._finish(model, plan, step, macs_after=macs_after, params_after=params_after, start=start)

    # helpers --------------------------------------------------------------------------

    def _decompose(self, model: nn.Module, ignored: Sequence[str]) -> list[_Layer]:
        skip = set(ignored)
        candidates = []
        lowrank = [n for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
        tied = {n.rpartition(".")[0] for names in tied_parameters(model) for n in names}
        for name, m in model.named_modules():
            if name in skip or any(name.startswith(p + ".") for p in (*skip, *lowrank)):
                continue
            if name in tied:  # factorizing one side would untie it
                continue
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
                if isinstance(self.eps, Mapping) and match_eps(self.eps, (name,)) is None:
                    continue
                candidates.append((name, m))
        return [
            _Layer(name, _singular_values(name, m))
            for name, m in progress_bar(candidates, desc="spectral: singular values", enabled=self.progress, leave=False)
        ]

    def _ranks(self, model: nn.Module, layers: Sequence[_Layer], eps: Any) -> dict[str, int]:
        """Rank per factorized layer (layers whose factors would not save parameters and
        all-zero layers are left out)."""
        modules = dict(model.named_modules())
        ranks = {}
        for layer in layers:
            e = match_eps(eps, (layer.name,))
            if e is None or float(layer.sigma[0]) <= 0:
                continue
            r = k_for_eps(layer.sigma, e, 2)
            if saves_params(modules[layer.name], r):
                ranks[layer.name] = r
        return ranks

    def _group_plan(self, model: nn.Module, layer: _Layer, eps: Any) -> GroupPlan:
        module = model.get_submodule(layer.name)
        full = int(layer.sigma.numel())
        target = match_eps(eps, (layer.name,))
        if float(layer.sigma[0]) <= 0:
            return GroupPlan(layer.name, (layer.name,), full, tuple(range(full)), 0.0, 0.0, target, "all-zero weight: kept dense")
        r = k_for_eps(layer.sigma, target, 2)
        if saves_params(module, r):
            return GroupPlan(layer.name, (layer.name,), full, tuple(range(r)),
                             relative_residual(layer.sigma, r, 2), dispersion(layer.sigma, r, 2), target)
        return GroupPlan(layer.name, (layer.name,), full, tuple(range(full)), 0.0, dispersion(layer.sigma, full, 2),
                         target, f"kept dense: rank {r} saves no parameters")


def _dense(layer: _Layer, note: str) -> GroupPlan:
    full = int(layer.sigma.numel())
    return GroupPlan(layer.name, (layer.name,), full, tuple(range(full)), 0.0, 0.0, None, note)


def _factorized(g: GroupPlan) -> bool:
    return g.kept < g.total and not g.note


def _singular_values(name: str, layer: nn.Module) -> torch.Tensor:
    """σ of the matricized weight, descending, float64 (:func:`robustprune.metrics.singular_values`,
    given the tall orientation ``W^T`` of a wide ``W``: the same σ, and LAPACK's ``svdvals``
    is ~5x faster on it)."""
    w = matricize(layer).detach()
    if not torch.isfinite(w).all():
        raise PruningError(f"Layer '{name}' has non-finite weights; cannot factorize it.")
    return singular_values(w if w.shape[0] >= w.shape[1] else w.T)


def _replace_all(model: nn.Module, replacements: Mapping[str, nn.Module]) -> None:
    """Set every ``{name: new module}`` in ``model``, all or nothing."""
    done: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, new in replacements.items():
            parent, attr = get_submodule_parent(model, name)
            done.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, new)
    except BaseException:
        for parent, attr, old in reversed(done):
            setattr(parent, attr, old)
        raise


def _factorized_count(model: nn.Module, inputs: Inputs, ranks: Mapping[str, int]) -> tuple[int, int, Any]:
    """Count the model with the given layers factorized (structure only), on a meta clone."""
    meta = prefer_meta(model, inputs)
    # small model: real arithmetic on aliased weights (and the real buffers, e.g. index
    # tables) with zero factors is cheaper than meta dispatch
    clone, _ = structural_clone(model, meta=meta)
    for name, rank in ranks.items():
        layer = clone.get_submodule(name)
        parent, attr = get_submodule_parent(clone, name)
        setattr(parent, attr, factorized_layer(layer, rank, device="meta" if meta else _device_of(model)))
    run = to_meta(inputs) if meta else inputs
    with torch.no_grad():
        out, macs, params = counted_forward(clone, run, shape_only=run is not inputs)
    return macs, params, output_signature(out)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
