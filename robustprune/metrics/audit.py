"""The dominant-direction audit (DESIGN.md, "Dominant-direction audit").

Perturb every input by ``+-delta * sign(v_1)`` (l-infinity) or ``+-delta * v_1`` (l2),
``v_1`` the top right singular vector of the first layer as a map of the raw input, and
report the accuracy under this single universal, data-free perturbation; compressible
models fail it first. :mod:`robustprune.analysis.audit` re-exports it (it lives in metrics
so that ``robustprune.metrics`` keeps exporting it without importing the analysis package).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustprune._inputs import BatchValidator
from robustprune._modes import eval_mode
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers import first_layer
from robustprune.metrics._checks import (
    Norm,
    check_budget,
    check_count,
    check_norm,
    check_shape,
    check_tol,
    refused_if_it_does_not_fit,
)
from robustprune.metrics._lanczos import POWER_TOL, power_iteration, start_vector
from robustprune.metrics.norms import jvp

__all__ = ["AuditResult", "top_input_direction", "dominant_direction_audit"]


@dataclass(frozen=True)
class AuditResult:
    """Accuracy under the universal, data-free perturbation ``x +- delta * s`` with ``s`` the
    (sign of the) top right singular vector of the first layer; ``accuracy`` counts a point
    only when it survives both signs. ``random_accuracy`` is the same for a random direction
    of the same norm (a control: a compressible model fails the dominant direction first)."""

    p: str
    delta: float
    n: int
    clean_accuracy: float
    accuracy_plus: float
    accuracy_minus: float
    accuracy: float
    random_accuracy: float
    top_singular_value: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


class _StopForward(Exception):
    pass


def _first_layer_map(model: nn.Module, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> first layer's output`` (the forward stops right after that layer)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            captured["out"] = out
            raise _StopForward

        handle = layer.register_forward_hook(hook)
        try:
            model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "out" not in captured:
            raise ModelNotSupportedError("The model's forward never reached its first layer.")
        return captured["out"]

    return fn


def top_input_direction(
    model: nn.Module, input_shape: Sequence[int], *, tol: float = POWER_TOL, max_iter: int = 300
) -> tuple[torch.Tensor, float]:
    """``(v_1, sigma_1)``: the top right singular vector (unit l2, shape ``input_shape``) of the
    first layer as a linear map of the raw input (input normalization included), by power
    iteration through the model's own forward up to that layer. Deterministic."""
    _check_model(model, "top_input_direction")
    input_shape = check_shape(input_shape)
    tol, max_iter = check_tol(tol), check_count(max_iter, "max_iter")
    found = first_layer(model)
    if found is None:
        raise ModelNotSupportedError("The model has no Linear or Conv2d layer.")
    _, layer = found
    shape = tuple(int(s) for s in input_shape)
    ref = next(model.parameters())
    fn = _first_layer_map(model, layer)
    with eval_mode(model), torch.no_grad():
        x0 = torch.full((1, *shape), 0.5, device=ref.device, dtype=ref.dtype)
        with refused_if_it_does_not_fit(f"The model cannot run on inputs of shape {shape}",
                                        "pass the shape of one example it takes.", "input_shape"):
            _, vjp_fn = torch.func.vjp(fn, x0)

        def forward(v: torch.Tensor) -> torch.Tensor:
            return jvp(fn, x0, v)

        v0 = start_vector((1, *shape), ref)
        sigma, v = power_iteration(forward, lambda u: vjp_fn(u)[0], v0, tol=tol, max_iter=max_iter)
    return v[0], float(sigma[0])


def dominant_direction_audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    delta: float,
    p: Norm | str | float = "inf",
    seed: int = 0,
    batch_size: int = 256,
) -> AuditResult:
    """Accuracy under ``x +- delta * sign(v_1)`` (l-infinity) or ``x +- delta * v_1`` (l2),
    ``v_1`` the top right singular vector of the first layer (see :func:`top_input_direction`);
    perturbed inputs are clipped to [0, 1]. One universal, data-free direction for all
    inputs; compressible models fail it first. Runs the model in eval mode and restores its
    mode; the global RNG is untouched (the control direction uses a local generator)."""
    p = check_norm(p)
    check_budget(delta)
    _check_model(model, "dominant_direction_audit")
    batch_size, seed = check_count(batch_size, "batch_size"), check_count(seed, "seed", minimum=0)
    x, y = _check_audit_data(model, x, y)
    v1, sigma1 = top_input_direction(model, tuple(x.shape[1:]))
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(tuple(x.shape[1:]), generator=g, dtype=torch.float32).to(v1)
    if p == "inf":
        direction, control = torch.sign(v1), torch.sign(rand)
    else:
        direction, control = v1 / v1.norm(), rand / rand.norm()
    with eval_mode(model), torch.no_grad():
        clean, plus, minus, both, rboth = [], [], [], [], []
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]

            def correct(shift: torch.Tensor | None, xb=xb, yb=yb) -> torch.Tensor:
                inp = xb if shift is None else (xb + shift).clamp(0.0, 1.0)
                return model(inp).argmax(dim=1) == yb

            c_plus, c_minus = correct(delta * direction), correct(-delta * direction)
            clean.append(correct(None))
            plus.append(c_plus)
            minus.append(c_minus)
            both.append(c_plus & c_minus)
            rboth.append(correct(delta * control) & correct(-delta * control))

    def acc(parts: list[torch.Tensor]) -> float:
        return float(torch.cat(parts).double().mean())

    return AuditResult(
        p=p,
        delta=float(delta),
        n=int(x.shape[0]),
        clean_accuracy=acc(clean),
        accuracy_plus=acc(plus),
        accuracy_minus=acc(minus),
        accuracy=acc(both),
        random_accuracy=acc(rboth),
        top_singular_value=sigma1,
    )


def _check_model(model: object, what: str) -> None:
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise InvalidArgumentError(f"{what} needs a torch.nn.Module with parameters, got {type(model).__name__}.",
                                   argument="model")


def _check_audit_data(model: nn.Module, x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N, ...) floating, finite, in [0, 1]; labels (N,) integer class indices in
    [0, C) of a model with C >= 2 logits (the audit counts argmax predictions): the checks
    of every labelled batch (:class:`~robustprune._inputs.BatchValidator`), C from one
    eval-mode forward."""
    check = BatchValidator("the audit's data")
    check(x, y)
    ref = next(model.parameters())
    x, y = x.to(device=ref.device, dtype=ref.dtype), y.to(device=ref.device, dtype=torch.long)  # type: ignore[union-attr]
    with eval_mode(model), torch.no_grad():
        with refused_if_it_does_not_fit(f"The model cannot run on x's examples of shape {tuple(x.shape[1:])}",
                                        "pass inputs of the shape the model takes.", "x"):
            out = model(x[:1])
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelNotSupportedError(
            f"The audit counts argmax predictions and needs a model with 2 or more logits (N, C); it "
            f"returned {shape}. A one-logit (logistic) head: wrap it to output (-z, z).")
    check.set_classes(out.shape[1])
    return x, y
