"""Spectral pruning: replace a layer by its ε-truncated SVD where that saves parameters.

For a layer with matricized weight ``W = U diag(σ) V^T`` (rows = output units, a Conv2d
``(out, in, kh, kw)`` as ``out x (in*kh*kw)``) the pruner keeps rank

    r = k_2(σ, ε) = min{r >= 1 : ||W - W_r||_F / ||W||_F <= ε}      (Eckart–Young)

and replaces

- a Linear ``h x d`` by a :class:`~robustprune.layers.LowRankLinear` (``A = sqrt(Σ_r) V_r^T``,
  ``d -> r`` without bias, then ``B = U_r sqrt(Σ_r)``, ``r -> h`` with the original bias);
- a Conv2d by ``Sequential(kh x kw conv in -> r`` (same stride, padding, dilation), ``1x1
  conv r -> out`` with the original bias``)``,

only where the factors have fewer parameters than the layer (``r (h + d) < h d``, resp.
``r (in kh kw + out) < out in kh kw``). The factorized layer computes exactly the rank-r
truncation ``W_r x + b``. Grouped and depthwise convolutions are kept dense.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustprune.errors import InvalidArgumentError, PruningError
from robustprune.layers import LowRankLinear, get_submodule_parent, matricize
from robustprune.metrics import dispersion, k_for_eps, relative_residual
from robustprune.pruners.base import (
    GroupPlan,
    Inputs,
    Plan,
    Pruner,
    PruningReport,
    _check_globs_match,
    _clone_count,
    _counted_forward,
    _eps_setting,
    _first_line,
    _match_eps,
    _prefer_meta,
    _shape_list,
    _shape_str,
    _signature,
    _structural_clone,
    _to_meta,
)
from robustprune.pruners.epsilon import residual_curve

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
        self.eps = _eps_setting(eps)

    def _setting(self) -> dict[str, Any]:
        return {"eps": self.eps, "target_macs": self.target_macs}

    # plan / apply ---------------------------------------------------------------------

    def plan(self, model: nn.Module, example_inputs: Inputs | None = None) -> Plan:
        inputs = self._resolve_inputs(model, example_inputs)
        ignored = self._ignored_names(model)
        macs, params, signature = _dense_count(model, inputs)
        layers = self._decompose(model, ignored)
        _check_globs_match(self.eps, [(layer.name,) for layer in layers])
        macs_planned = None
        if self.target_macs is None:
            eps = self.eps
        else:
            def kept_fraction(e: float) -> float:
                ranks = self._ranks(model, layers, e)
                return _meta_spectral_count(model, inputs, ranks)[0] / macs

            eps, fraction = self._search(self._candidates(layers), kept_fraction)
            macs_planned = int(round(fraction * macs))
        groups = tuple(self._group_plan(model, layer, eps) for layer in layers)
        setting = {**self._setting(), "ignored_layers": ignored, "example_input_shape": _shape_list(inputs)}
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
            macs_after, params_after, signature = _meta_spectral_count(model, plan.example_inputs, ranks)
        except Exception as exc:
            raise PruningError(
                f"The factorized model fails its forward pass ({type(exc).__name__}: {_first_line(exc)}); "
                "the model was left unchanged. Exclude the affected layers with ignored_layers."
            ) from exc
        if plan.output_signature is not None and signature != plan.output_signature:
            raise PruningError(
                f"Factorizing changed the output shape from {plan.output_signature} to {signature}; "
                "the model was left unchanged."
            )
        replacements = {}
        for name, rank in tqdm(ranks.items(), desc="spectral: factorize", disable=not self.progress, leave=False):
            layer = modules[name]
            u, sigma, vh = _svd(layer)
            replacements[name] = factorized_layer(layer, rank, u, sigma, vh)
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
        step = {"kind": "spectral", "method": plan.method,
                "layers": [{"name": n, "rank": int(r)} for n, r in ranks.items()]}
        return self._finish(model, plan, step, macs_after, params_after, start)

    # helpers --------------------------------------------------------------------------

    def _decompose(self, model: nn.Module, ignored: Sequence[str]) -> list[_Layer]:
        skip = set(ignored)
        candidates = []
        lowrank = [n for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
        for name, m in model.named_modules():
            if name in skip or any(name.startswith(p + ".") for p in (*skip, *lowrank)):
                continue
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
                if isinstance(self.eps, Mapping) and _match_eps(self.eps, (name,)) is None:
                    continue
                candidates.append((name, m))
        return [
            _Layer(name, _singular_values(name, m))
            for name, m in tqdm(candidates, desc="spectral: singular values", disable=not self.progress, leave=False)
        ]

    def _ranks(self, model: nn.Module, layers: Sequence[_Layer], eps: Any) -> dict[str, int]:
        """Rank per factorized layer (layers whose factors would not save parameters and
        all-zero layers are left out)."""
        modules = dict(model.named_modules())
        ranks = {}
        for layer in layers:
            e = _match_eps(eps, (layer.name,))
            if e is None or float(layer.sigma[0]) <= 0:
                continue
            r = k_for_eps(layer.sigma, e, 2)
            if _saves_params(modules[layer.name], r):
                ranks[layer.name] = r
        return ranks

    def _candidates(self, layers: Sequence[_Layer]) -> list[float]:
        values: set[float] = set()
        for layer in layers:
            if float(layer.sigma[0]) > 0:
                curve = residual_curve(layer.sigma, 2)
                values.update(float(v) for v in curve[:-1].tolist() if 0 < v < 1)
        return sorted({min(v * (1 + 1e-9) + 1e-12, 1 - 1e-12) for v in values}) or [0.5]

    def _group_plan(self, model: nn.Module, layer: _Layer, eps: Any) -> GroupPlan:
        module = model.get_submodule(layer.name)
        full = int(layer.sigma.numel())
        target = _match_eps(eps, (layer.name,))
        if float(layer.sigma[0]) <= 0:
            return GroupPlan(layer.name, (layer.name,), full, tuple(range(full)), 0.0, 0.0, target, "all-zero weight: kept dense")
        r = k_for_eps(layer.sigma, target, 2)
        if _saves_params(module, r):
            return GroupPlan(layer.name, (layer.name,), full, tuple(range(r)),
                             relative_residual(layer.sigma, r, 2), dispersion(layer.sigma, r, 2), target)
        return GroupPlan(layer.name, (layer.name,), full, tuple(range(full)), 0.0, dispersion(layer.sigma, full, 2),
                         target, f"kept dense: rank {r} saves no parameters")


def _factorized(g: GroupPlan) -> bool:
    return g.kept < g.total and not g.note


def _singular_values(name: str, layer: nn.Module) -> torch.Tensor:
    """σ of the matricized weight, descending, from the eigenvalues of the smaller Gram
    matrix in float64 (accurate to ~1e-8 σ_max, ample for ε; much faster than an SVD of a
    wide matrix)."""
    w = matricize(layer).detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all():
        raise PruningError(f"Layer '{name}' has non-finite weights; cannot factorize it.")
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    lam = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
    return lam.sqrt()


def _svd(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD ``W = U diag(σ) V^T`` of the matricized weight in float64 (computed on
    the tall orientation, which LAPACK handles much faster)."""
    w = matricize(layer).detach().to("cpu", torch.float64)
    if w.shape[0] >= w.shape[1]:
        return torch.linalg.svd(w, full_matrices=False)
    u, s, vh = torch.linalg.svd(w.T, full_matrices=False)
    return vh.T, s, u.T


def _saves_params(layer: nn.Module, rank: int) -> bool:
    if isinstance(layer, nn.Linear):
        h, d = layer.out_features, layer.in_features
        return rank * (h + d) < h * d
    kh, kw = layer.kernel_size
    return rank * (layer.in_channels * kh * kw + layer.out_channels) < layer.out_channels * layer.in_channels * kh * kw


def factorized_layer(
    layer: nn.Module,
    rank: int,
    u: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    vh: torch.Tensor | None = None,
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The rank-``rank`` replacement of a Linear (:class:`LowRankLinear`) or Conv2d
    (``Sequential(kxk conv to rank, 1x1 conv)``). With the SVD factors ``u, sigma, vh`` of
    the matricized weight, the replacement computes exactly ``W_r x + b``; without them its
    parameters are uninitialized (zeros), to be filled from a state dict. ``device`` defaults
    to the layer's (``"meta"`` builds the structure only). Mode and ``requires_grad`` follow
    the layer."""
    weight = layer.weight
    device = weight.device if device is None else torch.device(device)
    with torch.device("meta"):
        if isinstance(layer, nn.Linear):
            new: nn.Module = LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
            first, second = new.a, new.b
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
            first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, bias=False,
                              padding_mode=layer.padding_mode)
            second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
            new = nn.Sequential(first, second)
        else:
            raise InvalidArgumentError(
                f"Only Linear and ungrouped Conv2d layers can be factorized, got {type(layer).__name__}."
            )
    new = new.to(dtype=weight.dtype)
    if device.type != "meta":
        new = new.to_empty(device=device)
        if u is not None and sigma is not None and vh is not None:
            root = sigma[:rank].sqrt()
            a = (root[:, None] * vh[:rank]).to(device=device, dtype=weight.dtype)
            b = (u[:, :rank] * root[None, :]).to(device=device, dtype=weight.dtype)
            with torch.no_grad():
                first.weight.copy_(a.reshape(first.weight.shape))
                second.weight.copy_(b.reshape(second.weight.shape))
                if layer.bias is not None:
                    second.bias.copy_(layer.bias.detach())
        else:
            with torch.no_grad():
                for p in new.parameters():
                    p.zero_()
    for p in new.parameters():
        p.requires_grad_(weight.requires_grad)
    new.train(layer.training)
    return new


def replay_spectral_step(model: nn.Module, step: Mapping[str, Any]) -> None:
    """Rebuild the factorized layers of a recorded spectral step (weights zeroed, to be
    loaded from a state dict)."""
    try:
        layers = [(str(e["name"]), int(e["rank"])) for e in step["layers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"Malformed spectral pruning step in the history: {exc}.") from exc
    for name, rank in layers:
        try:
            layer = model.get_submodule(name)
        except AttributeError as exc:
            raise InvalidArgumentError(
                f"Cannot replay spectral pruning: the model has no layer '{name}'; the architecture "
                "does not match the one that was pruned."
            ) from exc
        parent, attr = get_submodule_parent(model, name)
        setattr(parent, attr, factorized_layer(layer, rank))


# --------------------------------------------------------------------------- counting


def _dense_count(model: nn.Module, inputs: Inputs) -> tuple[int, int, Any]:
    """``(MACs, params, output signature)`` of the unmodified model, with a clear error for
    inputs the model rejects."""
    if _prefer_meta(model, inputs):
        try:
            return _clone_count(model, inputs, meta=True)
        except Exception:
            pass
    clone, _ = _structural_clone(model, meta=False)
    try:
        with torch.no_grad():
            out, macs, params = _counted_forward(clone, inputs)
    except Exception as exc:
        raise InvalidArgumentError(
            f"The model does not accept example inputs of shape {_shape_str(inputs)} "
            f"({type(exc).__name__}: {_first_line(exc)}). Pass example_inputs with the shape the "
            "model expects, e.g. torch.rand(1, 3, 32, 32)."
        ) from exc
    return macs, params, _signature(out)


def _meta_spectral_count(model: nn.Module, inputs: Inputs, ranks: Mapping[str, int]) -> tuple[int, int, Any]:
    """Count the model with the given layers factorized (structure only), on a meta clone."""
    clone, _ = _structural_clone(model, meta=True)
    for name, rank in ranks.items():
        layer = clone.get_submodule(name)
        parent, attr = get_submodule_parent(clone, name)
        setattr(parent, attr, factorized_layer(layer, rank, device="meta"))
    if _prefer_meta(model, inputs):
        run = _to_meta(inputs)
    else:  # small model: real arithmetic on zero weights is cheaper than meta dispatch
        clone = clone.to_empty(device=_device_of(model))
        run = inputs
    with torch.no_grad():
        out, macs, params = _counted_forward(clone, run, shape_only=run is not inputs)
    return macs, params, _signature(out)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

