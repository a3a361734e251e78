"""Alignment of consecutive layers (DESIGN.md, "Alignment").

``A_p(l) = max_D ||W^{l+1} D W^l||_p / (||W^{l+1}||_p ||W^l||_p)``, ``D`` the Jacobian of the
ops between the layers (a binary diagonal mask for a ReLU). Linear pairs with elementwise ops
between are formed as matrices, exactly; pairs involving a convolution (or pooling) by the
power iteration of :mod:`robustprune.metrics._lanczos` through the masked composite operator.

Range: ``0 < A_p <= ||D||_p``, so ``A_p`` is in (0, 1] when the ops between are
1-Lipschitz (ReLU masks, folded BatchNorm, average or non-overlapping max pooling,
flattening). Across an overlapping max-pool the l2 norm of its Jacobian reaches
``sqrt(overlap)`` (one input can be the max of several windows) and ``A_2`` can exceed 1; an
unfolded BatchNorm scales by up to ``max |gamma| / sqrt(var + eps)``. The value is reported
as it is (it enters the aligned bound with the ops included);
:func:`robustprune.analysis.analyze` notes the pairs where it may exceed 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustprune._modes import eval_mode
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError
from robustprune.layers import LowRankLinear
from robustprune.metrics._checks import (
    Norm,
    as_real_tensor,
    check_count,
    check_nonnegative,
    check_norm,
    check_tol,
    refused_if_it_does_not_fit,
)
from robustprune.metrics._lanczos import ALIGNMENT_TOL, START_SEED, power_iteration, start_vector
from robustprune.metrics.norms import (
    checked_weight,
    is_linear_like,
    jvp,
    layer_adjoint,
    linear_part,
    operator_norm,
    sample_shape,
    weight_matrix,
)

__all__ = ["alignment", "conv_operator_norms"]


def alignment(
    layer_a: nn.Module,
    layer_b: nn.Module,
    p: Norm | str | float = "2",
    mode: Literal["data", "identity"] = "data",
    data: torch.Tensor | None = None,
    *,
    through: Callable[[torch.Tensor], torch.Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    max_samples: int = 256,
    norms: tuple[float, float] | None = None,
    tol: float = ALIGNMENT_TOL,
    max_iter: int = 300,
) -> float:
    """Alignment ``A_p = max_D ||W_b D W_a||_p / (||W_b||_p ||W_a||_p)`` of consecutive layers.

    ``D`` is the Jacobian of the ops between the layers (for a ReLU, the binary diagonal
    mask of active units). ``mode="data"`` takes the max over the masks observed on ``data``
    (the *inputs of layer_a*, up to ``max_samples`` of them); ``mode="identity"`` uses
    ``D = I`` (the activation replaced by the identity). In (0, 1] whenever the ops between
    are 1-Lipschitz (ReLU masks, average or non-overlapping max pooling, flattening); in
    general at most their Lipschitz constant (``sqrt(overlap)`` in l2 across an overlapping
    max-pool), see the module docstring.

    ``through`` maps layer_a's output to layer_b's input; default: ReLU in data mode, the
    identity in identity mode, followed by flattening when a conv feeds a Linear. In identity
    mode pass only the linear ops (the activation is what ``D = I`` replaces). ``norms``
    optionally gives precomputed ``(||W_a||_p, ||W_b||_p)`` (for convolutions: the operator
    norms at the input sizes seen here).

    Computation: Linear pairs with elementwise ops between are formed as matrices
    ``W_b diag(d) W_a`` (``d`` = the elementwise Jacobian, deduplicated over samples), l2 by
    batched ``matrix_norm`` and l-infinity by row sums, exactly. Pairs involving a conv (or
    non-elementwise ops such as pooling) are measured by batched power iteration through the
    masked composite operator ``v -> W_b J(z) W_a v`` built from the actual modules with
    ``torch.func.jvp``/``vjp`` (``z`` = layer_a's output on each sample), and the norms in
    the denominator are the operator norms at the same input sizes (``tol`` relative: the
    cost is one batch of forward and adjoint convolutions per step, so data mode on large
    convolutions is best run on a GPU or with fewer samples). The l-infinity value of
    such a composite needs every row of a position-dependent operator and is not computed:
    a :class:`ModelNotSupportedError` says so.

    A ``through`` that is an ``nn.Module`` runs in eval mode (a BatchNorm in it uses, and
    keeps, its running statistics); each module's mode is put back afterwards.
    """
    p = check_norm(p)
    if mode not in ("data", "identity"):
        raise InvalidArgumentError(f"mode must be 'data' or 'identity', got {mode!r}.")
    max_samples = check_count(max_samples, "max_samples")
    tol, max_iter = check_tol(tol), check_count(max_iter, "max_iter")
    for name, layer in (("layer_a", layer_a), ("layer_b", layer_b)):
        if not isinstance(layer, nn.Module):
            raise InvalidArgumentError(
                f"{name} must be a Linear, Conv2d or LowRankLinear module, got {type(layer).__name__}.", argument=name)
        checked_weight(layer)  # validates type, emptiness, finiteness
    if through is not None and not callable(through):
        raise InvalidArgumentError(
            f"through must be a callable (the ops between the layers), got {type(through).__name__}.",
            argument="through")
    if norms is not None:
        if isinstance(norms, (str, bytes)) or not isinstance(norms, (tuple, list)) or len(norms) != 2:
            raise InvalidArgumentError(
                f"norms must be the pair (||W_a||_p, ||W_b||_p), got {norms!r}.", argument="norms")
        norms = (check_nonnegative(norms[0], "norms[0]"), check_nonnegative(norms[1], "norms[1]"))
    ref = layer_a.weight if not isinstance(layer_a, LowRankLinear) else layer_a.a.weight
    x = _alignment_inputs(layer_a, mode, data, input_shape, max_samples, ref)
    user_through = through if through is not None else _default_through(layer_a, layer_b, mode)

    def through(z: torch.Tensor) -> torch.Tensor:  # never lets an in-place op touch z
        return user_through(z.clone())

    modes = eval_mode(user_through) if isinstance(user_through, nn.Module) else contextlib.nullcontext()
    with modes:
        return _alignment(layer_a, layer_b, p, through, x, norms, tol, max_iter)


def _alignment(
    layer_a: nn.Module,
    layer_b: nn.Module,
    p: str,
    through: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    norms: tuple[float, float] | None,
    tol: float,
    max_iter: int,
) -> float:
    z0, zb = _pair_outputs(layer_a, layer_b, through, x)
    diag = _elementwise_jacobian(through, z0) if is_linear_like(layer_a) and is_linear_like(layer_b) else None
    if diag is not None:
        num = _matrix_alignment_numerator(layer_a, layer_b, diag, p)
        if norms is None:
            norms = (operator_norm(layer_a, p), operator_norm(layer_b, p))
    else:
        if p == "inf":
            raise ModelNotSupportedError(
                "The l-infinity alignment of a pair involving a convolution or pooling is not "
                "computed: its row sums vary with position and mask. Use p='2'."
            )
        num = _operator_alignment_numerator(layer_a, layer_b, through, x, z0, tol, max_iter)
        if norms is None:
            norms = (_operator_l2(layer_a, x, tol, max_iter), _operator_l2(layer_b, zb[:1], tol, max_iter))
    den = float(norms[0]) * float(norms[1])
    if den == 0:
        raise InvalidArgumentError("A layer has an all-zero weight: alignment is undefined.")
    return float(num / den)


def _alignment_inputs(
    layer_a: nn.Module,
    mode: str,
    data: torch.Tensor | None,
    input_shape: Sequence[int] | None,
    max_samples: int,
    ref: torch.Tensor,
) -> torch.Tensor:
    if data is not None:
        x = as_real_tensor(data, "data")
        if x.ndim < 2 or x.shape[0] == 0:
            raise InvalidArgumentError(
                f"data must be a batch of layer_a's inputs (N, ...), got shape {tuple(x.shape)}.", argument="data"
            )
        x = x[:max_samples].detach().to(device=ref.device, dtype=ref.dtype)
        if not bool(torch.isfinite(x).all()):
            raise InvalidArgumentError("data contains NaN or infinite values.", argument="data")
        return x
    if mode == "data":
        raise InvalidArgumentError(
            "mode='data' needs data= (a batch of layer_a's inputs); or use mode='identity'."
        )
    if is_linear_like(layer_a):
        d = layer_a.in_features
        return torch.zeros(1, d, device=ref.device, dtype=ref.dtype)
    shape = sample_shape(layer_a, input_shape)
    return torch.zeros(1, *shape, device=ref.device, dtype=ref.dtype)


def _pair_outputs(
    layer_a: nn.Module, layer_b: nn.Module, through: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z0, zb)``: layer_a's output on ``x`` and layer_b's input, checked to fit layer_b."""
    with torch.no_grad():
        with refused_if_it_does_not_fit(f"layer_a does not accept inputs of shape {tuple(x.shape[1:])}",
                                        "pass a batch of layer_a's inputs (or input_shape=).", "data"):
            z0 = layer_a(x)
        try:
            zb = through(z0)
            if not isinstance(zb, torch.Tensor):
                raise TypeError(f"through returned a {type(zb).__name__}, not a tensor")
            layer_b(zb)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidArgumentError(
                f"layer_b does not accept layer_a's output after `through` ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); pass the ops between them as through=.", argument="through"
            ) from exc
    return z0, zb


def _default_through(layer_a: nn.Module, layer_b: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    flatten = isinstance(layer_a, nn.Conv2d) and is_linear_like(layer_b)
    if mode == "data":
        return (lambda z: torch.relu(z).flatten(1)) if flatten else torch.relu
    return (lambda z: z.flatten(1)) if flatten else (lambda z: z)


def _elementwise_jacobian(
    through: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor
) -> torch.Tensor | None:
    """The diagonal of ``through``'s Jacobian at each sample when it is elementwise
    (ReLU-like, dropout, folded BN), else ``None``."""
    with torch.no_grad():
        out = through(z0)
        if out.shape != z0.shape or z0.ndim != 2:
            return None
        diag = jvp(through, z0, torch.ones_like(z0))
        g = torch.Generator().manual_seed(START_SEED)
        probe = torch.randn(z0.shape, generator=g, dtype=torch.float32).to(z0)
        if not torch.allclose(jvp(through, z0, probe), diag * probe, rtol=1e-4, atol=1e-6):
            return None
    return diag


def _matrix_alignment_numerator(
    layer_a: nn.Module, layer_b: nn.Module, diag: torch.Tensor, p: str
) -> float:
    wa, wb = weight_matrix(layer_a), weight_matrix(layer_b)
    masks = torch.unique(diag.to(torch.float64), dim=0)
    # chunk the (n_masks, h_b, d_a) stack to ~2^24 entries
    chunk = max(1, (1 << 24) // max(1, wb.shape[0] * wa.shape[1]))
    best = 0.0
    for start in range(0, masks.shape[0], chunk):
        prod = (wb.unsqueeze(0) * masks[start : start + chunk].unsqueeze(1)) @ wa
        if p == "2":
            value = torch.linalg.matrix_norm(prod, ord=2).max()
        else:
            value = prod.abs().sum(dim=2).max()
        best = max(best, float(value))
    return best


def _operator_l2(layer: nn.Module, x: torch.Tensor, tol: float, max_iter: int) -> float:
    if is_linear_like(layer):
        return operator_norm(layer, "2")
    return operator_norm(layer, "2", tuple(x.shape[1:]), mode="operator", tol=tol, max_iter=max_iter)


def _operator_alignment_numerator(
    layer_a: nn.Module,
    layer_b: nn.Module,
    through: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    z0: torch.Tensor,
    tol: float,
    max_iter: int,
) -> float:
    lin_a, lin_b = linear_part(layer_a), linear_part(layer_b)
    # samples per chunk so that the Krylov basis stays under ~1 GiB of float32
    chunk = max(1, (1 << 28) // max(1, x[0].numel() * max_iter))
    best = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            xs, zs = x[start : start + chunk], z0[start : start + chunk]
            adj_a = layer_adjoint(layer_a, xs)
            _, vjp_t = torch.func.vjp(through, zs)
            adj_b = layer_adjoint(layer_b, through(zs))

            def forward(v: torch.Tensor, zs: torch.Tensor = zs) -> torch.Tensor:
                return lin_b(jvp(through, zs, lin_a(v)))

            def adjoint(u: torch.Tensor, adj_a=adj_a, vjp_t=vjp_t, adj_b=adj_b) -> torch.Tensor:
                return adj_a(vjp_t(adj_b(u))[0])

            v0 = start_vector((1, *xs.shape[1:]), xs).expand_as(xs).contiguous()
            sigma, _ = power_iteration(forward, adjoint, v0, tol=tol, max_iter=max_iter)
            best = max(best, float(sigma.max()))
    return best


def conv_operator_norms(
    convs: Sequence[nn.Conv2d], input_shape: Sequence[int], *, tol: float = ALIGNMENT_TOL, max_iter: int = 300
) -> list[float]:
    """The l2 operator norms of convolutions of one shape at one input size, by one batched
    power iteration (one operator per leading index, each from the deterministic start of
    :func:`robustprune.metrics.operator_norm`, run until every one meets ``tol``: each value
    is what ``operator_norm(conv, "2", input_shape, mode="operator", tol=tol)`` returns, or
    closer to the norm from more steps). Zero-padded convs with equal weight shapes, strides,
    paddings, dilations and groups are applied as one grouped convolution; others one by
    one. The Lanczos steps' own cost (orthogonalization, the tridiagonal eigenproblem) is
    paid once for all, which is most of the time on narrow layers."""
    convs = list(convs)
    for conv in convs:
        checked_weight(conv)
    shape = sample_shape(convs[0], input_shape)
    ref = convs[0].weight
    with torch.no_grad():
        x0 = start_vector((1, *shape), ref)
        fwd, adj = _stacked_operator(convs, x0)
        v0 = x0.expand(len(convs), *shape).contiguous()
        sigma, _ = power_iteration(fwd, adj, v0, tol=tol, max_iter=max_iter)
    return [float(s) for s in sigma]


def _stacked_operator(convs: list[nn.Conv2d], x0: torch.Tensor) -> tuple[Callable, Callable]:
    """``(forward, adjoint)`` of the block-diagonal operator ``v_i -> conv_i(v_i)``."""
    first = convs[0]
    same = all(
        c.padding_mode == "zeros" and not isinstance(c.padding, str) and c.weight.shape == first.weight.shape
        and (c.stride, c.padding, c.dilation, c.groups) == (first.stride, first.padding, first.dilation, first.groups)
        for c in convs
    )
    if not same:
        fwds = [linear_part(c) for c in convs]
        adjs = [layer_adjoint(c, x0) for c in convs]
        return (
            lambda v: [f(v[i : i + 1]) for i, f in enumerate(fwds)],
            lambda us: torch.cat([a(u) for a, u in zip(adjs, us)]),
        )
    n, c_in = len(convs), first.in_channels
    weight = torch.cat([c.weight for c in convs])
    groups = n * first.groups
    args = (first.stride, first.padding, first.dilation)
    out = F.conv2d(x0, first.weight, None, *args, first.groups)
    extra = tuple(
        int(size_in) - ((int(size_out) - 1) * s - 2 * p + d * (k - 1) + 1)
        for size_in, size_out, k, s, p, d in zip(
            x0.shape[-2:], out.shape[-2:], first.kernel_size, first.stride, first.padding, first.dilation
        )
    )

    def forward(v: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(v.reshape(1, n * c_in, *v.shape[-2:]), weight, None, *args, groups)
        return y.reshape(n, -1, *y.shape[-2:])

    def adjoint(u: torch.Tensor) -> torch.Tensor:
        x = F.conv_transpose2d(
            u.reshape(1, -1, *u.shape[-2:]), weight, None, first.stride, first.padding, extra, groups, first.dilation
        )
        return x.reshape(n, c_in, *x.shape[-2:])

    return forward, adjoint
