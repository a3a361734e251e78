"""Weights as matrices and their norms: row norms, singular values, operator norms.

A weight is matricized with rows = output units (:func:`robustprune.layers.matricize`),
detached and validated (non-empty, finite) with a message that names the layer. Spectra and
row norms are computed in float64 (one ``svdvals`` per weight: :func:`singular_values` is
the one singular-value computation of the package). Operator norms of convolutions on
inputs of a given shape use the power iteration of :mod:`robustprune.metrics._lanczos`
through the layer's bias-free map (:func:`linear_part`) and its adjoint
(:func:`layer_adjoint`), in the layer's own dtype.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers import LowRankLinear, matricize
from robustprune.metrics._checks import (
    Norm,
    check_count,
    check_norm,
    check_q,
    check_shape,
    check_tol,
)
from robustprune.metrics._lanczos import POWER_TOL, power_iteration, start_vector

__all__ = [
    "weight_matrix",
    "checked_weight",
    "row_norms",
    "singular_values",
    "operator_norm",
    "conv_norm_bound_factor",
    "is_linear_like",
    "sample_shape",
    "linear_part",
    "linear_adjoint",
    "layer_adjoint",
    "jvp",
]


def weight_matrix(layer: nn.Module | torch.Tensor, name: str | None = None) -> torch.Tensor:
    """The matricized weight, detached, float64, validated non-empty and finite."""
    return checked_weight(layer, name).to(torch.float64)


def checked_weight(layer: nn.Module | torch.Tensor, name: str | None = None) -> torch.Tensor:
    """The matricized weight, detached, in its own dtype, validated non-empty and finite
    (a value is finite in float64 iff it is finite in its own floating dtype)."""
    w = matricize(layer).detach()
    label = f"Layer '{name}'" if name else f"The {type(layer).__name__} weight"
    if w.numel() == 0:
        raise InvalidArgumentError(f"{label} is empty (shape {tuple(w.shape)}); nothing to measure.")
    if w.is_floating_point() and not torch.isfinite(w).all():
        raise InvalidArgumentError(
            f"{label} has non-finite entries (NaN or inf); the model diverged or was loaded "
            "incorrectly. Fix the weights before measuring them."
        )
    return w


def row_norms(layer: nn.Module | torch.Tensor, q: float = 1) -> torch.Tensor:
    """``nu_i = ||W_i||_q`` of every row (output unit) of the matricized weight, float64.
    ``q = 1`` (the default) gives the rows whose maximum is ``||W||_inf``."""
    return torch.linalg.vector_norm(weight_matrix(layer), ord=check_q(q), dim=1)


def singular_values(layer: nn.Module | torch.Tensor) -> torch.Tensor:
    """Singular values of the matricized weight, descending, float64 (one ``svdvals``)."""
    return torch.linalg.svdvals(weight_matrix(layer))


def operator_norm(
    layer: nn.Module | torch.Tensor,
    p: Norm | str | float = "2",
    input_shape: Sequence[int] | None = None,
    mode: Literal["matricized", "operator"] = "matricized",
    *,
    tol: float = POWER_TOL,
    max_iter: int = 300,
) -> float:
    """``||W||_p`` of a layer (biases excluded).

    Linear (and LowRankLinear): exact, ``||W||_2 = sigma_max``, ``||W||_inf = max_i ||W_i||_1``.
    Conv2d, ``mode="operator"``: the norm of the convolution as an operator on inputs of
    ``input_shape``; l2 by power iteration with ``conv2d`` and its adjoint ``conv_transpose2d``
    (the vector-Jacobian product for non-zero padding modes), deterministic start, converged to
    ``tol`` relative; l-infinity = max over output channels of the kernel's absolute sum
    (exact away from the borders and an upper bound everywhere).
    Conv2d, ``mode="matricized"``: the same formulas applied to the ``out x (in/groups*kh*kw)``
    matrix; for l-infinity this is the operator norm's closed form, for l2 it is the
    *matricized* ``sigma_max``, which differs from the operator norm (see
    :func:`conv_norm_bound_factor` for the factor that makes it an upper bound)."""
    p = check_norm(p)
    if mode not in ("matricized", "operator"):
        raise InvalidArgumentError(f"mode must be 'matricized' or 'operator', got {mode!r}.")
    tol, max_iter = check_tol(tol), check_count(max_iter, "max_iter")
    if isinstance(layer, nn.Conv2d) and mode == "operator" and p == "2":
        shape = sample_shape(layer, input_shape)
        checked_weight(layer)  # validates finiteness with a clear message
        with torch.no_grad():
            x0 = start_vector((1, *shape), layer.weight)
            fwd = linear_part(layer)
            adj = layer_adjoint(layer, x0)
            sigma, _ = power_iteration(fwd, adj, x0, tol=tol, max_iter=max_iter)
        return float(sigma[0])
    w = weight_matrix(layer)
    if p == "inf":
        return float(w.abs().sum(dim=1).max())
    return float(torch.linalg.matrix_norm(w, ord=2))


def conv_norm_bound_factor(layer: nn.Module) -> float:
    """``c`` with ``||conv||_2 <= c * sigma_max(matricized W)`` on every input size.

    ``c = sqrt(r_h r_w)``, ``r = ceil(k / (s / gcd(s, d)))`` the most kernel taps that can land
    on one input pixel (kernel ``k``, stride ``s``, dilation ``d``): the conv is
    ``W_mat @ im2col(x)`` and each pixel appears at most ``r_h r_w`` times in ``im2col(x)``.
    1 for Linear layers."""
    if not isinstance(layer, nn.Conv2d):
        matricize(layer)  # refuses what is not a Linear, Conv2d or LowRankLinear
        return 1.0
    taps = 1
    for k, s, d in zip(layer.kernel_size, layer.stride, layer.dilation):
        period = s // math.gcd(s, d)
        taps *= min(k, math.ceil(k / period))
    return math.sqrt(taps)


# --------------------------------------------------------------------------- operators


def is_linear_like(layer: nn.Module) -> bool:
    """True for Linear and LowRankLinear (layers whose operator is their matrix)."""
    return isinstance(layer, (nn.Linear, LowRankLinear))


def sample_shape(layer: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """Per-sample input shape ``(C, H, W)`` of a conv (a leading batch dim is dropped)."""
    if input_shape is None:
        raise InvalidArgumentError(
            f"The operator norm of a {type(layer).__name__} depends on the input size: pass "
            "input_shape=(C, H, W) (or use mode='matricized')."
        )
    shape = check_shape(input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise InvalidArgumentError(f"input_shape must be (C, H, W), got {tuple(input_shape)}.", argument="input_shape")
    if isinstance(layer, nn.Conv2d):
        if shape[0] != layer.in_channels:
            raise InvalidArgumentError(
                f"input_shape has {shape[0]} channels but the conv expects {layer.in_channels}.",
                argument="input_shape")
        if not isinstance(layer.padding, str):
            for size, k, s, p, d in zip(shape[1:], layer.kernel_size, layer.stride, layer.padding, layer.dilation):
                if (size + 2 * p - d * (k - 1) - 1) // s + 1 < 1:
                    raise InvalidArgumentError(
                        f"input_shape {shape} is smaller than the conv's {layer.kernel_size[0]}x"
                        f"{layer.kernel_size[1]} kernel (padding {layer.padding}): the conv has no output there.",
                        argument="input_shape")
    return shape


def linear_part(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's map without its bias (the linear operator whose norm is measured)."""
    if isinstance(layer, nn.Conv2d):
        return lambda x: layer._conv_forward(x, layer.weight, None)
    if isinstance(layer, nn.Linear):
        return lambda x: F.linear(x, layer.weight)
    if isinstance(layer, LowRankLinear):
        return lambda x: F.linear(F.linear(x, layer.a.weight), layer.b.weight)
    raise ModelNotSupportedError(
        f"{type(layer).__name__} is not a Linear, Conv2d or LowRankLinear layer."
    )


def linear_adjoint(
    fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u -> A^T u`` for a linear ``fn = A`` (a reusable vector-Jacobian product)."""
    _, vjp_fn = torch.func.vjp(fn, example)
    return lambda u: vjp_fn(u)[0]


def layer_adjoint(layer: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u -> W^T u`` for the layer's linear part at inputs shaped like ``example``:
    ``conv_transpose2d`` for zero-padded convs (with the output padding that restores the
    input size), the vector-Jacobian product otherwise (other padding modes, Linear)."""
    if (
        isinstance(layer, nn.Conv2d)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and example.ndim == 4
    ):
        with torch.no_grad():
            out_size = layer._conv_forward(example[:1], layer.weight, None).shape[-2:]
        extra = []
        for size_in, size_out, k, s, p, d in zip(
            example.shape[-2:], out_size, layer.kernel_size, layer.stride, layer.padding, layer.dilation
        ):
            extra.append(int(size_in) - ((int(size_out) - 1) * s - 2 * p + d * (k - 1) + 1))
        if all(0 <= e < max(s, d) for e, s, d in zip(extra, layer.stride, layer.dilation)):
            return lambda u: F.conv_transpose2d(
                u, layer.weight, None, layer.stride, layer.padding, tuple(extra), layer.groups, layer.dilation
            )
    return linear_adjoint(linear_part(layer), example)


def jvp(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``J_fn(z) t`` by forward-mode AD."""
    with warnings.catch_warnings():
        # torch's first forward-mode call scripts its decompositions with the deprecated
        # torch.jit.script; the warning is torch-internal and says nothing about our inputs
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return torch.func.jvp(fn, (z,), (t,))[1]
