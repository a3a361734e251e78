"""``analyze(model, ...) -> Report``, step by step: check the settings, resolve the inputs,
fold the model, measure every layer, align every consecutive pair, bound the chain, audit.

All quantities are measured on :func:`robustprune.layers.fold_for_analysis` of the model
(eval-mode BatchNorm and the input normalization folded into the adjacent weights), so they
describe the map from raw inputs in [0, 1] to logits; the folded copy is checked to compute
the model's function on the example inputs (else the raw weights are measured, with a note).
Every argument is checked before anything runs; the model itself is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from robustprune._progress import bar
from robustprune.analysis._checks import (
    DEFAULT_DELTA,
    Settings,
    check_labels,
    check_model,
    check_settings,
)
from robustprune.analysis._data import (
    check_forward,
    collect_data,
    example_batch,
    input_shapes,
    logits_of,
    model_name,
)
from robustprune.analysis._network import NetworkContext, network_bound
from robustprune.analysis._pairs import (
    Alignments,
    OperatorNorms,
    PairContext,
    Reasons,
    alignment_ceiling_notes,
    pair_alignments,
)
from robustprune.analysis.report import LayerRow, Report
from robustprune.distributed import resolve_device
from robustprune.errors import RobustPruneError
from robustprune.layers import (
    classifier_head,
    consecutive_pairs,
    fold_for_analysis,
    prunable_layers,
    sequential_chain,
)
from robustprune.layers.graph import trace
from robustprune.metrics import (
    AuditResult,
    compressibility,
    dominant_direction_audit,
    operator_norm,
    singular_values,
    weight_matrix,
)

__all__ = ["analyze", "DEFAULT_DELTA"]


#: relative tolerance of the check that the folded copy computes the model's function:
#: ``max |folded(x) - model(x)| <= FOLD_RTOL * max |model(x)|`` on the example inputs
FOLD_RTOL = 1e-3


def analyze(
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    data: Any = None,
    norms: Sequence[str] = ("2", "inf"),
    conv_norm: Literal["matricized", "operator"] = "matricized",
    eps: float = 0.05,
    *,
    delta: float | Mapping[str, float] | None = None,
    max_samples: int = 256,
    alignment_samples: int | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Report:
    """Measure compressibility, dispersion, norms and alignment of every prunable layer, the
    network's Lipschitz and gap bounds, and (with labelled data) the dominant-direction audit
    and the certified fraction.

    Which numbers are theorems: the naive Lipschitz bound, the gap bound (for the model's
    head: ``delta L ||c||`` for a one-logit logistic head, ``2 delta L ||C||`` in l-infinity
    and ``sqrt(2) delta L ||C||`` in l2 for a softmax cross-entropy head) and the certified
    fraction. The aligned values (``aligned``, ``gap_aligned``) are estimates from the
    observed (or identity) masks; :attr:`NetworkBound.kinds` and every rendering say so.

    Args:
        model: any model with Linear/Conv2d layers; left unchanged (mode included).
        example_inputs: a batch the model accepts (sets conv input sizes); inferred from
            ``data`` or from the model (:func:`robustprune._inputs.resolve_example_inputs`:
            the input shape recorded by ``robustprune.models.create_model``, timm and
            torchvision classifiers, a first Linear layer) when omitted.
        data: ``(x, y)``, ``x`` alone, or an iterable of ``(x, y)`` batches (first
            ``max_samples`` samples): inputs finite and in [0, 1], labels integer class
            indices in [0, K). Enables data-mode alignment (masks observed on ``x``);
            labels enable the audit, the certified fraction and the clean accuracy.
        norms: which of ``"2"``, ``"inf"`` to use for alignment, bounds and the audit.
        conv_norm: ``"matricized"`` (fast) or ``"operator"`` (conv l2 norms by power
            iteration at the actual input sizes, reported in their own column).
        eps: the relative residual at which ``k`` is reported (in (0, 1)).
        delta: perturbation budget, a float for every norm or ``{"2": ..., "inf": ...}``
            (finite, >= 0, at most 1 in l-infinity); default :data:`DEFAULT_DELTA`.
        max_samples: at most this many samples of ``data`` are used (audit, certified
            fraction, clean accuracy).
        alignment_samples: data-mode alignment takes the max over the masks of the first
            this many samples (DESIGN: up to 256). Default: 256 for Linear pairs (exact and
            cheap) and 32 for pairs involving a convolution, where every sample costs a batch
            of forward and adjoint convolutions per power-iteration step (about 10 s per
            32 samples per ResNet-18 pair on one CPU core; raise it on a GPU).
        progress: show a progress bar over layers.
        device: where to measure (``"cpu"``, ``"cuda"``, ``"auto"``: CUDA when available);
            default the model's own. Another device than the model's measures a copy
            there (the model stays where it is).

    Raises:
        RobustPruneError: (an ``InvalidArgumentError`` or ``ModelNotSupportedError``) for
            a bad argument, before anything runs: a non-numeric or out-of-range ``eps``,
            ``delta``, ``max_samples`` or ``alignment_samples``, unknown ``norms`` or
            ``conv_norm``, data or example inputs the model does not accept (or NaN), a
            model without prunable layers, with non-finite weights or on the meta device.
    """
    s = check_settings(eps, norms, conv_norm, delta, max_samples, alignment_samples, progress)
    model = _on_device(model, device)
    x, y, example = _inputs(model, example_inputs, data, s.max_samples)
    notes: list[str] = []
    folded = _folded(model, example, notes)
    layers = prunable_layers(folded)
    head = _head(folded, layers)
    shapes = input_shapes(folded, [m for _, m in layers], example[:1])
    mode = "data" if x is not None else "identity"
    base_rows = {
        name: _layer_metrics(name, layer, shapes.get(name), s, is_head=head == name)
        for name, layer in bar(layers, desc="analyze: layers", enabled=s.progress)
    }
    batch = x if x is not None else example[:1]
    graph, alignments, reasons = _alignments(folded, base_rows, shapes, mode, batch, s, notes)
    rows = tuple(_finish_row(name, base_rows[name], alignments, reasons) for name, _ in layers)
    chain_layers, chain_reason = _chain(folded, head)
    logits = logits_of(model, x) if x is not None and y is not None else None
    network = NetworkContext(folded, graph, chain_layers, chain_reason, rows, alignments, mode, logits, y)
    bounds = {p: network_bound(network, p, s.deltas[p]) for p in s.norms}
    audit, audit_reason = _audit(model, x, y, s)
    return Report(
        model=model_name(model),
        eps=s.eps,
        conv_norm=s.conv_norm,
        norms=s.norms,
        alignment_mode=mode,
        n_samples=0 if x is None else int(x.shape[0]),
        rows=rows,
        is_chain=chain_layers is not None,
        chain_reason=chain_reason,
        head=head,
        bounds=bounds,
        audit=audit,
        audit_reason=audit_reason,
        clean_accuracy=None if logits is None else float((logits.argmax(1) == y).double().mean()),
        notes=tuple(notes + _row_notes(rows, layers, s.conv_norm)),
    )


# --------------------------------------------------------------------------- steps


def _inputs(
    model: nn.Module, example_inputs: Any, data: Any, max_samples: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """``(x, y, example)``: the data batch (``None`` without data) and one checked batch of
    example inputs, both on the model's device in its dtype; the model is checked first,
    and the labels against the number of logits."""
    check_model(model)
    ref = next(model.parameters())
    device, dtype = ref.device, (ref.dtype if ref.is_floating_point() else torch.float32)
    x, y = collect_data(data, max_samples, device, dtype)
    example = example_batch(model, example_inputs, x, device, dtype)
    check_forward(model, example, "example_inputs")
    if x is not None:
        logits = check_forward(model, x[:1], "data")
        if y is not None:
            check_labels(y, logits)
    return x, y, example


def _on_device(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    """``model``, or a copy of it on ``device`` when that is another device."""
    if device is None:
        return model
    check_model(model)
    target = resolve_device(device)
    ref = next(model.parameters())
    if ref.device == target or (ref.device.type == target.type == "cpu"):
        return model
    return copy.deepcopy(model).to(target)


def _folded(model: nn.Module, example: torch.Tensor, notes: list[str]) -> nn.Module:
    """The folded copy, checked to compute the model's function on ``example``; the raw
    weights (BatchNorm and normalization kept as ops, whose Lipschitz constants enter the
    bounds), with a note, when folding is not possible or changes the function."""
    try:
        folded = fold_for_analysis(model)
    except RobustPruneError as exc:
        folded = copy.deepcopy(model).eval()
        notes.append(f"BatchNorm/normalization not folded ({exc}); norms describe the raw weights")
    else:
        ref, out = logits_of(model, example).double(), logits_of(folded, example).double()
        diff, scale = float((out - ref).abs().max()), float(ref.abs().max())
        if out.shape != ref.shape or not diff <= FOLD_RTOL * scale:
            folded = copy.deepcopy(model).eval()
            notes.append(
                f"the folded copy does not compute the model's function on example_inputs (max "
                f"|difference| {diff:.3g} of max |output| {scale:.3g}); BatchNorm/normalization "
                "not folded, norms describe the raw weights"
            )
    folded.requires_grad_(False)
    return folded


def _head(folded: nn.Module, layers: list[tuple[str, nn.Module]]) -> str | None:
    """The name of the classifier head among ``layers`` (``None`` when there is none)."""
    head_module = classifier_head(folded)
    return next((n for n, m in layers if m is head_module), None)


def _layer_metrics(
    name: str,
    layer: nn.Module,
    input_shape: tuple[int, ...] | None,
    s: Settings,
    *,
    is_head: bool,
) -> dict[str, Any]:
    """The fields of one :class:`LayerRow` but its alignment."""
    w = weight_matrix(layer, name)
    sigma = singular_values(w)  # the one SVD of this weight
    nu = w.abs().sum(dim=1)
    zero = bool(sigma[0] == 0)  # e.g. a zero-initialized BatchNorm folded in
    op2 = None
    if isinstance(layer, nn.Conv2d) and s.conv_norm == "operator" and input_shape is not None:
        op2 = operator_norm(layer, "2", input_shape, mode="operator")
    return {
        "name": name,
        "kind": type(layer).__name__,
        "weight_shape": tuple(int(d) for d in layer.weight.shape),
        "matrix_shape": (int(w.shape[0]), int(w.shape[1])),
        "input_shape": input_shape,
        "is_head": is_head,
        "spectral": None if zero else compressibility(sigma, eps=s.eps, q=2, kind="singular values"),
        "neuron": None if zero else compressibility(nu, eps=s.eps, q=2, kind="row l1 norms"),
        "frobenius": float(torch.linalg.vector_norm(w)),
        "norm_2_matricized": float(sigma[0]),
        "norm_2_operator": op2,
        "norm_inf": float(nu.max()),
    }


def _alignments(
    folded: nn.Module,
    base_rows: dict[str, dict[str, Any]],
    shapes: dict[str, tuple[int, ...]],
    mode: str,
    x: torch.Tensor,
    s: Settings,
    notes: list[str],
) -> tuple[Any, Alignments, Reasons]:
    """``(graph, alignments, reasons)`` of every consecutive pair (``graph`` is ``None``,
    with a note, when the folded model cannot be traced)."""
    try:
        graph = trace(folded)
        pairs = consecutive_pairs(folded)
    except RobustPruneError as exc:
        notes.append(f"no alignment: {exc}")
        return None, {}, {}
    op_norms = OperatorNorms(folded, shapes, {n: r["norm_2_operator"] for n, r in base_rows.items()})
    ctx = PairContext(folded, graph, mode, x, s.norms, op_norms, s.alignment_samples)
    alignments, reasons = pair_alignments(ctx, pairs, progress=s.progress)
    notes += alignment_ceiling_notes(ctx, alignments)
    return graph, alignments, reasons


def _finish_row(
    name: str,
    base: dict[str, Any],
    alignments: Alignments,
    reasons: Reasons,
) -> LayerRow:
    """The row with the best alignment of ``name`` with each layer it feeds."""
    mine = [(b, v) for (a, b), v in alignments.items() if a == name]
    best: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for p in {p for _, values in mine for p in values}:
        found = [values[p] for _, values in mine if values.get(p) is not None]
        best[p] = max(found) if found else None  # type: ignore[type-var]
        if not found:
            why[p] = next((reasons[(name, b)].get(p, "") for b, _ in mine), "")
    return LayerRow(**base, next_layers=tuple(b for b, _ in mine), alignment=best, alignment_reason=why)


def _row_notes(rows: tuple[LayerRow, ...], layers: list[tuple[str, nn.Module]], conv_norm: str) -> list[str]:
    """Notes on all-zero layers and on matricized conv norms."""
    notes = []
    zero = [r.name for r in rows if r.spectral is None]
    if zero:
        notes.append(
            f"all-zero weights (compressibility undefined, shown as —): {', '.join(zero)}"
        )
    if conv_norm == "matricized" and any(isinstance(m, nn.Conv2d) for _, m in layers):
        notes.append(
            "conv ||W||_2 is the matricized sigma_max; l2 bounds multiply it by "
            "sqrt(overlapping taps) to stay valid (conv_norm='operator' for the exact norm)"
        )
    return notes


def _chain(folded: nn.Module, head: str | None) -> tuple[tuple[str, ...] | None, str]:
    """The chain's layers when the model is a sequential chain ending in its head, else
    ``None`` and the reason."""
    chain = sequential_chain(folded)
    if not chain.is_chain:
        return None, chain.reason
    if head is None:
        return None, "the model has no classifier head"
    if chain.layers[-1] != head:  # type: ignore[index]
        return None, f"the last layer of the chain is not the classifier head '{head}'"
    return chain.layers, ""


def _audit(
    model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None, s: Settings
) -> tuple[dict[str, AuditResult] | None, str]:
    """The dominant-direction audit for every norm, or the reason it did not run."""
    if x is None or y is None:
        return None, "pass labelled data=(x, y) to run the dominant-direction audit"
    return {p: dominant_direction_audit(model, x, y, delta=s.deltas[p], p=p) for p in s.norms}, ""
