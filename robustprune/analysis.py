"""``analyze(model, ...) -> Report``: per-layer compressibility table, network bounds, audit.

All quantities are measured on :func:`robustprune.layers.fold_for_analysis` of the model
(eval-mode BatchNorm and the input normalization folded into the adjacent weights), so they
describe the map from raw inputs in [0, 1] to logits. The model itself is never modified.

Per layer (rows = output units of the matricized weight):
spectral compressibility ``k_sigma`` at the chosen ``eps``, the achieved ``eps_sigma``,
dispersion ``beta_sigma`` and structure factor ``S_sigma = sqrt(1-eps^2)/(sqrt(k)(1-beta))``;
the same for the row l1 norms ``nu`` (neuron compressibility); the scale ``||W||_F``; the
matricized ``sigma_max`` (``= S_sigma ||W||_F`` exactly), the conv operator l2 norm when
``conv_norm="operator"``, ``||W||_inf``; and the alignment ``A_p`` with the layer(s) it feeds.

Network (sequential chains only; residual or attention models get ``None`` and the reason):
the naive Lipschitz bound ``prod ||W^l||_p`` of the encoder (every layer but the head, times
the Lipschitz constants of the ops between), the aligned estimate, the head's norm
``||C||_(p->p)``, the gap bound ``delta L ||C||`` and, with labelled data, the certified
fraction. With labelled data, the dominant-direction audit runs for every norm.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robustprune import metrics
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError, RobustPruneError
from robustprune.layers import (
    _RELU_LIKE,
    MeanPad,
    Normalize,
    _node_kind,
    _trace,
    classifier_head,
    consecutive_pairs,
    fold_for_analysis,
    prunable_layers,
    sequential_chain,
)
from robustprune.metrics import AuditResult, Compressibility

__all__ = ["LayerRow", "NetworkBound", "Report", "analyze", "DEFAULT_DELTA"]

logger = logging.getLogger(__name__)

#: budgets used for gap bounds, certified fraction and audit when ``delta`` is not given
#: (DESIGN's CIFAR budgets; pass ``delta=`` for other datasets)
DEFAULT_DELTA: dict[str, float] = {"inf": 8 / 255, "2": 0.5}
#: default number of samples whose masks enter data-mode alignment of conv pairs
CONV_ALIGNMENT_SAMPLES = 32


@dataclass(frozen=True)
class LayerRow:
    """Metrics of one prunable layer (of the folded model)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    input_shape: tuple[int, ...] | None
    is_head: bool
    spectral: Compressibility | None
    neuron: Compressibility | None
    frobenius: float
    norm_2_matricized: float
    norm_2_operator: float | None
    norm_inf: float
    next_layers: tuple[str, ...] = ()
    alignment: dict[str, float | None] = field(default_factory=dict)
    alignment_reason: dict[str, str] = field(default_factory=dict)

    def norm(self, p: str) -> float:
        """``||W||_p`` as used in network bounds (see :class:`NetworkBound`)."""
        if p == "inf":
            return self.norm_inf
        return self.norm_2_operator if self.norm_2_operator is not None else self.norm_2_matricized


@dataclass(frozen=True)
class NetworkBound:
    """Lipschitz bounds of the encoder ``Phi`` (all chain layers before the head) for one norm.

    ``naive`` is the always-valid ``prod ||W^l||_p`` (conv l2 norms: the operator norm by
    power iteration with ``conv_norm="operator"``, else ``c * sigma_max(matricized)`` with
    :func:`robustprune.metrics.conv_norm_bound_factor`); ``aligned`` pairs the layers as in
    DESIGN.md and is an *estimate* (``aligned_kind`` says which masks). ``gap`` is
    ``delta * naive * head_norm`` and ``gap_aligned`` the same with the aligned estimate."""

    p: str
    delta: float
    naive: float | None = None
    aligned: float | None = None
    aligned_kind: str = ""
    head_norm: float | None = None
    gap: float | None = None
    gap_aligned: float | None = None
    certified_fraction: float | None = None
    layer_norms: tuple[float, ...] = ()
    between: tuple[float, ...] = ()
    reason: str = ""
    aligned_reason: str = ""


@dataclass(frozen=True)
class Report:
    """What :func:`analyze` found: ``rows`` (one :class:`LayerRow` per prunable layer),
    ``bounds`` (one :class:`NetworkBound` per norm), ``audit`` (one
    :class:`~robustprune.metrics.AuditResult` per norm, when labelled data was given) and the
    settings. ``str(report)`` is a text table; :meth:`to_dict` is JSON-serializable."""

    model: str
    eps: float
    conv_norm: str
    norms: tuple[str, ...]
    alignment_mode: str
    n_samples: int
    rows: tuple[LayerRow, ...]
    is_chain: bool
    chain_reason: str
    head: str | None
    bounds: dict[str, NetworkBound]
    audit: dict[str, AuditResult] | None
    audit_reason: str
    clean_accuracy: float | None
    notes: tuple[str, ...] = ()

    def row(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise InvalidArgumentError(f"The report has no layer named '{name}'.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (non-finite numbers become ``None``)."""
        return _jsonable(asdict(self))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_markdown(self) -> str:
        lines = [f"### Analysis of `{self.model}`", "", _settings_line(self), ""]
        header, table = _layer_table(self, markdown=True)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in table]
        lines += ["", "| norm | δ | naive L(Φ) | aligned L(Φ) (estimate) | ‖C‖ | gap bound | certified |",
                  "|---|---|---|---|---|---|---|"]
        for p in self.norms:
            b = self.bounds[p]
            lines.append(
                f"| ℓ{_p_label(p)} | {_fmt(b.delta)} | {_fmt(b.naive)} | {_fmt(b.aligned)} | "
                f"{_fmt(b.head_norm)} | {_fmt(b.gap)} | {_fmt(b.certified_fraction)} |"
            )
        reasons = _bound_reasons(self)
        if reasons:
            lines += [""] + [f"- {r}" for r in reasons]
        if self.audit:
            lines += ["", "| audit | δ | clean | +δv₁ | −δv₁ | both signs | random direction |",
                      "|---|---|---|---|---|---|---|"]
            for p, a in self.audit.items():
                lines.append(
                    f"| ℓ{_p_label(p)} | {_fmt(a.delta)} | {_fmt(a.clean_accuracy)} | "
                    f"{_fmt(a.accuracy_plus)} | {_fmt(a.accuracy_minus)} | {_fmt(a.accuracy)} | "
                    f"{_fmt(a.random_accuracy)} |"
                )
        elif self.audit_reason:
            lines += ["", f"- audit: {self.audit_reason}"]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        lines = [f"Analysis of {self.model}", _settings_line(self), ""]
        header, table = _layer_table(self, markdown=False)
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in table]
        lines.append("")
        for p in self.norms:
            b = self.bounds[p]
            if b.naive is None:
                lines.append(f"l{_p_label(p)}: Lipschitz bound: none ({b.reason})")
                continue
            aligned = (
                f"aligned {_fmt(b.aligned)} ({b.aligned_kind})" if b.aligned is not None
                else f"aligned: none ({b.aligned_reason})"
            )
            cert = "" if b.certified_fraction is None else f", certified {_fmt(b.certified_fraction)}"
            lines.append(
                f"l{_p_label(p)}: L(Phi) naive {_fmt(b.naive)} (upper bound), {aligned}; "
                f"||C|| {_fmt(b.head_norm)}; gap bound at delta={_fmt(b.delta)}: {_fmt(b.gap)}{cert}"
            )
        if self.audit:
            for p, a in self.audit.items():
                lines.append(
                    f"audit l{_p_label(p)} delta={_fmt(a.delta)} (n={a.n}): clean {_fmt(a.clean_accuracy)}, "
                    f"+-delta*v1 {_fmt(a.accuracy)} (+ {_fmt(a.accuracy_plus)}, - {_fmt(a.accuracy_minus)}), "
                    f"random direction {_fmt(a.random_accuracy)}"
                )
        elif self.audit_reason:
            lines.append(f"audit: {self.audit_reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


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
) -> Report:
    """Measure compressibility, dispersion, norms and alignment of every prunable layer, the
    network's Lipschitz and gap bounds, and (with labelled data) the dominant-direction audit
    and the certified fraction.

    Args:
        model: any model with Linear/Conv2d layers; left unchanged (mode included).
        example_inputs: a batch the model accepts (sets conv input sizes); inferred from
            ``data`` or from ``robustprune.models.model_spec(model)`` when omitted.
        data: ``(x, y)``, ``x`` alone, or an iterable of ``(x, y)`` batches (first
            ``max_samples`` samples). Enables data-mode alignment (masks observed on ``x``);
            labels enable the audit, the certified fraction and the clean accuracy.
        norms: which of ``"2"``, ``"inf"`` to use for alignment, bounds and the audit.
        conv_norm: ``"matricized"`` (fast) or ``"operator"`` (conv l2 norms by power
            iteration at the actual input sizes, reported in their own column).
        eps: the relative residual at which ``k`` is reported (in (0, 1)).
        delta: perturbation budget, a float for every norm or ``{"2": ..., "inf": ...}``;
            default :data:`DEFAULT_DELTA`.
        max_samples: at most this many samples of ``data`` are used (audit, certified
            fraction, clean accuracy).
        alignment_samples: data-mode alignment takes the max over the masks of the first
            this many samples (DESIGN: up to 256). Default: 256 for Linear pairs (exact and
            cheap) and 32 for pairs involving a convolution, where every sample costs a batch
            of forward and adjoint convolutions per power-iteration step (about 10 s per
            32 samples per ResNet-18 pair on one CPU core; raise it on a GPU).
        progress: show a progress bar over layers.
    """
    eps = metrics._check_eps(eps)
    norms_t = _check_norms(norms)
    if conv_norm not in ("matricized", "operator"):
        raise InvalidArgumentError(f"conv_norm must be 'matricized' or 'operator', got {conv_norm!r}.")
    if int(max_samples) < 1 or (alignment_samples is not None and int(alignment_samples) < 1):
        raise InvalidArgumentError(
            f"max_samples and alignment_samples must be >= 1, got {max_samples} and {alignment_samples}."
        )
    deltas = _check_delta(delta, norms_t)
    if not prunable_layers(model):
        raise ModelNotSupportedError(
            f"{type(model).__name__} has no prunable layer (Linear, Conv2d or LowRankLinear): "
            "there is nothing to analyze."
        )
    ref = next(model.parameters())
    device, dtype = ref.device, (ref.dtype if ref.is_floating_point() else torch.float32)
    x, y = _collect_data(data, int(max_samples), device, dtype)
    example = _example_inputs(model, example_inputs, x, device, dtype)
    _check_forward(model, example, "example_inputs")
    if x is not None:
        _check_forward(model, x[:1], "data")

    notes: list[str] = []
    try:
        folded = fold_for_analysis(model)
    except RobustPruneError as exc:
        folded = copy.deepcopy(model).eval()
        notes.append(f"BatchNorm/normalization not folded ({exc}); norms describe the raw weights")
    folded.requires_grad_(False)
    layers = prunable_layers(folded)
    head_module = classifier_head(folded)
    head = next((n for n, m in layers if m is head_module), None)
    shapes = _input_shapes(folded, [m for _, m in layers], example[:1])
    mode = "data" if x is not None else "identity"

    # ---- per-layer metrics
    base_rows: dict[str, dict[str, Any]] = {}
    iterator = tqdm(layers, desc="analyze: layers", disable=None if progress else True)
    for name, layer in iterator:
        base_rows[name] = _layer_metrics(name, layer, shapes.get(name), eps, conv_norm, head == name)

    # ---- alignment of consecutive pairs
    try:
        graph = _trace(folded)
        pairs = consecutive_pairs(folded)
    except RobustPruneError as exc:
        graph, pairs = None, []
        notes.append(f"no alignment: {exc}")
    alignments: dict[tuple[str, str], dict[str, float | None]] = {}
    align_reasons: dict[tuple[str, str], dict[str, str]] = {}
    op_norms = _OperatorNorms(folded, shapes, {n: r["norm_2_operator"] for n, r in base_rows.items()})
    inputs_cache: dict[str, torch.Tensor] = {}
    pair_iter = tqdm(pairs, desc="analyze: alignment", disable=None if progress else True)
    for pair in pair_iter:
        alignments[(pair.a, pair.b)], align_reasons[(pair.a, pair.b)] = _pair_alignment(
            folded, graph, pair.a, pair.b, mode, x if x is not None else example[:1], norms_t,
            inputs_cache, op_norms, alignment_samples,
        )
    inputs_cache.clear()

    rows = tuple(_finish_row(name, base_rows[name], alignments, align_reasons) for name, _ in layers)
    zero = [r.name for r in rows if r.spectral is None]
    if zero:
        notes.append(
            f"all-zero weights (compressibility undefined, shown as —): {', '.join(zero)}"
        )

    # ---- network bounds (sequential chains)
    chain = sequential_chain(folded)
    chain_reason = chain.reason
    if chain.is_chain and head is not None and chain.layers[-1] != head:  # type: ignore[index]
        chain_reason = f"the last layer of the chain is not the classifier head '{head}'"
    elif chain.is_chain and head is None:
        chain_reason = "the model has no classifier head"
    is_chain = chain.is_chain and not chain_reason
    logits = _logits(model, x) if x is not None and y is not None else None
    bounds = {
        p: _network_bound(
            p, deltas[p], folded, graph, chain.layers if is_chain else None, chain_reason, rows,
            alignments, mode, logits, y,
        )
        for p in norms_t
    }

    # ---- audit
    audit: dict[str, AuditResult] | None = None
    audit_reason = ""
    if x is None or y is None:
        audit_reason = "pass labelled data=(x, y) to run the dominant-direction audit"
    else:
        audit = {
            p: metrics.dominant_direction_audit(model, x, y, delta=deltas[p], p=p) for p in norms_t
        }
    clean = None if logits is None else float((logits.argmax(1) == y).double().mean())
    if conv_norm == "matricized" and any(isinstance(m, nn.Conv2d) for _, m in layers):
        notes.append(
            "conv ||W||_2 is the matricized sigma_max; l2 bounds multiply it by "
            "sqrt(overlapping taps) to stay valid (conv_norm='operator' for the exact norm)"
        )
    return Report(
        model=_model_name(model),
        eps=eps,
        conv_norm=conv_norm,
        norms=norms_t,
        alignment_mode=mode,
        n_samples=0 if x is None else int(x.shape[0]),
        rows=rows,
        is_chain=is_chain,
        chain_reason=chain_reason,
        head=head,
        bounds=bounds,
        audit=audit,
        audit_reason=audit_reason,
        clean_accuracy=clean,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- inputs


def _check_norms(norms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(norms, str):
        norms = (norms,)
    out = tuple(dict.fromkeys(metrics._check_p(p) for p in norms))
    if not out:
        raise InvalidArgumentError("norms must name at least one of '2' and 'inf'.")
    return out


def _check_delta(delta: float | Mapping[str, float] | None, norms: tuple[str, ...]) -> dict[str, float]:
    if delta is None:
        values = dict(DEFAULT_DELTA)
    elif isinstance(delta, Mapping):
        values = {metrics._check_p(k): float(v) for k, v in delta.items()}
        missing = [p for p in norms if p not in values]
        if missing:
            raise InvalidArgumentError(f"delta has no budget for norm(s) {missing}; give one per norm.")
    else:
        values = {p: float(delta) for p in norms}
    for p in norms:
        if not math.isfinite(values[p]) or values[p] < 0:
            raise InvalidArgumentError(f"delta for l{_p_label(p)} must be finite and >= 0, got {values[p]}.")
    return values


def _collect_data(
    data: Any, max_samples: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if data is None:
        return None, None
    if isinstance(data, torch.Tensor):
        xs, ys = [data], None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        xs, ys = [data[0]], [torch.as_tensor(data[1])]
    elif isinstance(data, Iterable):
        xs, ys, n = [], [], 0
        for batch in data:
            if isinstance(batch, torch.Tensor):
                bx, by = batch, None
            elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
                bx, by = batch[0], (batch[1] if len(batch) > 1 else None)
            else:
                raise InvalidArgumentError(
                    f"data batches must be tensors or (x, y) pairs, got {type(batch).__name__}."
                )
            xs.append(bx)
            if by is not None:
                ys.append(torch.as_tensor(by))
            n += bx.shape[0]
            if n >= max_samples:
                break
        if ys and len(ys) != len(xs):
            raise InvalidArgumentError("Some data batches have labels and some do not.")
        ys = ys or None
    else:
        raise InvalidArgumentError(
            f"data must be (x, y), x, or an iterable of (x, y) batches, got {type(data).__name__}."
        )
    if not xs:
        raise InvalidArgumentError("data is empty.")
    x = torch.cat([t.detach() for t in xs])[:max_samples].to(device=device, dtype=dtype)
    y = None if ys is None else torch.cat(ys)[:max_samples].to(device=device, dtype=torch.long)
    if x.shape[0] == 0:
        raise InvalidArgumentError("data is empty.")
    if y is not None and y.shape != x.shape[:1]:
        raise InvalidArgumentError(
            f"data labels must be one per input, got {tuple(y.shape)} for {x.shape[0]} inputs."
        )
    if not torch.isfinite(x).all():
        raise InvalidArgumentError("data has non-finite inputs (NaN or inf).")
    return x, y


def _example_inputs(
    model: nn.Module,
    example_inputs: torch.Tensor | None,
    x: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    if example_inputs is not None:
        example = torch.as_tensor(example_inputs)
        if example.ndim < 2 or example.shape[0] == 0:
            raise InvalidArgumentError(
                f"example_inputs must be a non-empty batch (N, ...), got shape {tuple(example.shape)}; "
                "add a batch dimension, e.g. x.unsqueeze(0)."
            )
        return example.detach().to(device=device, dtype=dtype)
    if x is not None:
        return x[:1]
    from robustprune.models import model_spec

    spec = model_spec(model)
    if spec is None or spec.input_shape is None:
        raise InvalidArgumentError(
            "Cannot infer the input shape of this model: pass example_inputs (e.g. "
            "torch.rand(1, 3, 32, 32)) or data."
        )
    g = torch.Generator().manual_seed(0)
    return torch.rand((1, *spec.input_shape), generator=g).to(device=device, dtype=dtype)


def _check_forward(model: nn.Module, x: torch.Tensor, what: str) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise InvalidArgumentError(
            f"The model does not accept {what} of shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Pass inputs with the shape the "
            "model expects, e.g. torch.rand(1, 3, 32, 32) for a CIFAR model."
        ) from exc
    finally:
        model.train(was_training)


def _input_shapes(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    names = {id(m): n for n, m in model.named_modules()}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for layer in layers:

        def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(names[id(m)], tuple(args[0].shape[1:]))

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


class _StopForward(Exception):
    pass


class _OperatorNorms:
    """l2 operator norms of the folded model's layers at their input sizes, computed once.

    They are the denominators of conv alignments. Norms already measured for the report
    (``conv_norm="operator"``, to ``POWER_TOL``) are reused; the others are computed to
    ``ALIGNMENT_TOL``, the tolerance of the alignment's numerator, as
    :func:`robustprune.metrics.alignment` does (a tighter denominator would not make the
    ratio more accurate, and costs about half again as many power-iteration steps)."""

    def __init__(self, model: nn.Module, shapes: dict[str, tuple[int, ...]], known: dict[str, float | None]) -> None:
        self.model, self.shapes = model, shapes
        self.values = {k: v for k, v in known.items() if v is not None}

    def get(self, name: str) -> float:
        if name not in self.values:
            layer = self.model.get_submodule(name)
            if isinstance(layer, nn.Conv2d):
                self.values[name] = metrics.operator_norm(
                    layer, "2", self.shapes.get(name), mode="operator", tol=metrics.ALIGNMENT_TOL
                )
            else:
                self.values[name] = metrics.operator_norm(layer, "2")
        return self.values[name]


def _layer_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs ``layer`` receives when the model runs on ``x`` (the forward stops there)."""
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach())
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ModelNotSupportedError("A layer was never called in the forward pass.")
    return captured[0]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(x[i : i + 256]) for i in range(0, x.shape[0], 256)])
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- per layer


def _layer_metrics(
    name: str,
    layer: nn.Module,
    input_shape: tuple[int, ...] | None,
    eps: float,
    conv_norm: str,
    is_head: bool,
) -> dict[str, Any]:
    w = metrics._weight_matrix(layer, name)
    sigma = torch.linalg.svdvals(w)  # the one SVD of this weight
    nu = w.abs().sum(dim=1)
    zero = bool(sigma[0] == 0)  # e.g. a zero-initialized BatchNorm folded in
    op2 = None
    if isinstance(layer, nn.Conv2d) and conv_norm == "operator" and input_shape is not None:
        op2 = metrics.operator_norm(layer, "2", input_shape, mode="operator")
    weight = layer.weight
    return {
        "name": name,
        "kind": type(layer).__name__,
        "weight_shape": tuple(int(s) for s in weight.shape),
        "matrix_shape": (int(w.shape[0]), int(w.shape[1])),
        "input_shape": input_shape,
        "is_head": is_head,
        "spectral": None if zero else metrics.compressibility(sigma, eps=eps, q=2, kind="singular values"),
        "neuron": None if zero else metrics.compressibility(nu, eps=eps, q=2, kind="row l1 norms"),
        "frobenius": float(torch.linalg.vector_norm(w)),
        "norm_2_matricized": float(sigma[0]),
        "norm_2_operator": op2,
        "norm_inf": float(nu.max()),
    }


def _finish_row(
    name: str,
    base: dict[str, Any],
    alignments: dict[tuple[str, str], dict[str, float | None]],
    reasons: dict[tuple[str, str], dict[str, str]],
) -> LayerRow:
    mine = [(b, v) for (a, b), v in alignments.items() if a == name]
    best: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for p in {p for _, values in mine for p in values}:
        found = [values[p] for _, values in mine if values.get(p) is not None]
        best[p] = max(found) if found else None  # type: ignore[type-var]
        if not found:
            why[p] = next((reasons[(name, b)].get(p, "") for b, _ in mine), "")
    return LayerRow(**base, next_layers=tuple(b for b, _ in mine), alignment=best, alignment_reason=why)


# --------------------------------------------------------------------------- alignment


_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish}
_ACTIVATION_METHODS = {"relu", "relu_"}


def _is_activation(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _RELU_LIKE)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ACTIVATION_METHODS
    return False


def _node_of(graph: torch.fx.Graph, target: str) -> torch.fx.Node:
    for node in graph.nodes:
        if node.op == "call_module" and str(node.target) == target:
            return node
    raise ModelNotSupportedError(f"Layer '{target}' is not called in the traced forward.")


def _path_between(graph: torch.fx.Graph, modules: dict[str, nn.Module], a: str, b: str) -> list[torch.fx.Node]:
    """The pass-through nodes from layer ``a``'s output to layer ``b``'s input."""
    start = _node_of(graph, a)
    stack: list[tuple[torch.fx.Node, list[torch.fx.Node]]] = [(start, [])]
    while stack:
        node, path = stack.pop()
        for user in node.users:
            kind = _node_kind(user, modules)
            if kind == "layer" and str(user.target) == b:
                return path
            if kind == "pass" and len(user.all_input_nodes) == 1:
                stack.append((user, [*path, user]))
    raise ModelNotSupportedError(f"Layer '{b}' does not consume layer '{a}''s output directly.")


def _through_module(
    root: nn.Module, graph: torch.fx.Graph, a: str, b: str, keep_activations: bool
) -> torch.fx.GraphModule:
    """The ops between layers ``a`` and ``b`` as a module ``z -> input of b`` (a copy of the
    traced nodes); with ``keep_activations=False`` the activations are replaced by the
    identity (``D = I``)."""
    modules = dict(root.named_modules())
    path = _path_between(graph, modules, a, b)
    new = torch.fx.Graph()
    z = new.placeholder("z")
    env: dict[torch.fx.Node, torch.fx.Node] = {_node_of(graph, a): z}
    last = z
    for node in path:
        (src,) = node.all_input_nodes
        if not keep_activations and _is_activation(node, modules):
            env[node] = env[src]
        else:
            env[node] = new.node_copy(node, lambda n: env[n])
            if env[node].op == "call_method" and env[node].target == "relu_":
                env[node].target = "relu"
            if "inplace" in env[node].kwargs:
                env[node].kwargs = {**env[node].kwargs, "inplace": False}
        last = env[node]
    new.output(last)
    return torch.fx.GraphModule(root, new)


def _pair_alignment(
    folded: nn.Module,
    graph: torch.fx.Graph | None,
    a: str,
    b: str,
    mode: str,
    x: torch.Tensor,
    norms: tuple[str, ...],
    cache: dict[str, torch.Tensor],
    op_norms: _OperatorNorms,
    samples: int | None,
) -> tuple[dict[str, float | None], dict[str, str]]:
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    if graph is None:
        return {p: None for p in norms}, {p: "model not traceable" for p in norms}
    layer_a, layer_b = folded.get_submodule(a), folded.get_submodule(b)
    has_conv = isinstance(layer_a, nn.Conv2d) or isinstance(layer_b, nn.Conv2d)
    max_samples = int(samples) if samples is not None else (CONV_ALIGNMENT_SAMPLES if has_conv else 256)
    try:
        through = _through_module(folded, graph, a, b, keep_activations=(mode == "data"))
        key = f"{a}@{max_samples}"
        if key not in cache:
            cache.clear()  # keep one layer's inputs in memory at a time
            cache[key] = _layer_inputs(folded, layer_a, x[:max_samples])
        inputs = cache[key]
    except RobustPruneError as exc:
        return {p: None for p in norms}, {p: str(exc) for p in norms}
    for p in norms:
        try:
            pre = None
            if p == "2" and has_conv:
                pre = (op_norms.get(a), op_norms.get(b))
            values[p] = metrics.alignment(
                layer_a, layer_b, p, mode, inputs, through=through, max_samples=max_samples, norms=pre
            )
        except RobustPruneError as exc:
            values[p] = None
            reasons[p] = str(exc)
    return values, reasons


# --------------------------------------------------------------------------- bounds


# sup of the derivative (the Lipschitz constant) of smooth activations
_ACTIVATION_LIPSCHITZ = {nn.GELU: 1.1289, nn.SiLU: 1.0999, nn.Hardswish: 1.5}
_FUNCTION_LIPSCHITZ = {F.gelu: 1.1289, F.silu: 1.0999, F.hardswish: 1.5}


def _pool_overlap(kernel: Any, stride: Any) -> int:
    ks = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    ss = ks if stride is None or stride == [] else ((stride, stride) if isinstance(stride, int) else tuple(stride))
    return math.prod(min(k, math.ceil(k / s)) for k, s in zip(ks, ss))


def _op_lipschitz(node: torch.fx.Node, modules: dict[str, nn.Module], p: str) -> float | None:
    """Lipschitz constant (w.r.t. ``p``) of one pass-through op, ``None`` when unknown."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity, MeanPad, Normalize)):
            if isinstance(m, Normalize):
                return float((1.0 / m.std).max())
            return 1.0
        if isinstance(m, nn.LeakyReLU):
            return max(1.0, abs(m.negative_slope))
        if isinstance(m, nn.ELU):
            return max(1.0, float(m.alpha))
        for cls, value in _ACTIVATION_LIPSCHITZ.items():
            if isinstance(m, cls):
                return value
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_var is None:
                return None
            gamma = m.weight if m.weight is not None else torch.ones_like(m.running_var)
            return float((gamma / torch.sqrt(m.running_var + m.eps)).abs().max())
        if isinstance(m, nn.MaxPool2d):
            return 1.0 if p == "inf" else math.sqrt(_pool_overlap(m.kernel_size, m.stride))
        if isinstance(m, nn.AvgPool2d):
            if p == "inf" or m.count_include_pad or m.padding in (0, (0, 0)):
                return 1.0
            return None
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = m.output_size
            one = size in (1, (1, 1), [1, 1])
            return 1.0 if p == "inf" or one else None
        return None
    if node.op == "call_function":
        t = node.target
        if t in (F.relu, torch.relu, F.relu6, F.dropout, torch.flatten):
            return 1.0
        if t in _FUNCTION_LIPSCHITZ:
            return _FUNCTION_LIPSCHITZ[t]
        if t is F.leaky_relu:
            slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
            return max(1.0, abs(float(slope)))
        if t is F.max_pool2d:
            if p == "inf":
                return 1.0
            kernel = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
            stride = node.kwargs.get("stride", node.args[2] if len(node.args) > 2 else None)
            return None if kernel is None else math.sqrt(_pool_overlap(kernel, stride))
        if t in (F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            if p == "inf":
                return 1.0
            if t is F.avg_pool2d:
                padding = node.kwargs.get("padding", node.args[3] if len(node.args) > 3 else 0)
                return 1.0 if padding in (0, (0, 0)) else None
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
            return 1.0 if size in (1, (1, 1), [1, 1]) else None
        return None
    if node.op == "call_method":
        return 1.0 if node.target in ("relu", "relu_", "flatten", "view", "reshape") else None
    return None


def _chain_segments(
    graph: torch.fx.Graph, modules: dict[str, nn.Module], layers: tuple[str, ...]
) -> list[list[torch.fx.Node]]:
    """Ops before layer 0, between consecutive layers, and after the last layer."""
    segments: list[list[torch.fx.Node]] = [[]]
    for node in graph.nodes:
        kind = _node_kind(node, modules)
        if kind == "layer":
            segments.append([])
        elif kind in ("pass", "normalize"):
            segments[-1].append(node)
    if len(segments) != len(layers) + 1:
        raise ModelNotSupportedError("The chain's layers and the traced graph disagree.")
    return segments


def _network_bound(
    p: str,
    delta: float,
    folded: nn.Module,
    graph: torch.fx.Graph | None,
    chain_layers: tuple[str, ...] | None,
    chain_reason: str,
    rows: tuple[LayerRow, ...],
    alignments: dict[tuple[str, str], dict[str, float | None]],
    mode: str,
    logits: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> NetworkBound:
    if chain_layers is None or graph is None:
        reason = chain_reason or "the model could not be traced"
        return NetworkBound(p=p, delta=delta, reason=f"no network bound: {reason}")
    modules = dict(folded.named_modules())
    by_name = {r.name: r for r in rows}
    try:
        segments = _chain_segments(graph, modules, chain_layers)
    except RobustPruneError as exc:
        return NetworkBound(p=p, delta=delta, reason=str(exc))
    factors: list[float] = []
    for segment in segments:
        f = 1.0
        for node in segment:
            value = _op_lipschitz(node, modules, p)
            if value is None:
                return NetworkBound(
                    p=p, delta=delta,
                    reason=f"op '{node.name}' between layers has no known l{_p_label(p)} Lipschitz constant",
                )
            f *= value
        factors.append(f)
    encoder = chain_layers[:-1]
    head = by_name[chain_layers[-1]]
    norms = []
    for name in encoder:
        row = by_name[name]
        if p == "2" and row.kind == "Conv2d" and row.norm_2_operator is None:
            norms.append(row.norm_2_matricized * metrics.conv_norm_bound_factor(folded.get_submodule(name)))
        else:
            norms.append(row.norm(p))
    # the ops before layer 1 scale the input; those after the head scale the logits
    prefix, between, suffix = factors[0], factors[1:-1], factors[-1]
    naive = prefix * metrics.naive_lipschitz_bound(norms, between)
    head_norm = head.norm(p) * suffix
    if p == "2" and head.kind == "Conv2d" and head.norm_2_operator is None:
        head_norm *= metrics.conv_norm_bound_factor(folded.get_submodule(head.name))
    aligned, aligned_reason = None, ""
    if len(encoder) >= 2:
        pair_values = [
            alignments.get((encoder[i], encoder[i + 1]), {}).get(p) if i % 2 == 0 else None
            for i in range(len(encoder) - 1)
        ]
        missing = [f"{encoder[i]}->{encoder[i + 1]}" for i in range(0, len(encoder) - 1, 2) if pair_values[i] is None]
        if missing:
            aligned_reason = f"no l{_p_label(p)} alignment for {', '.join(missing)}"
        else:
            aligned = prefix * metrics.aligned_lipschitz_bound(norms, pair_values, between)
    elif encoder:
        aligned = naive
    cert = None
    if logits is not None and labels is not None:
        cert = metrics.certified_fraction(logits, labels, delta=delta, lipschitz=naive, head_norm=head_norm)
    return NetworkBound(
        p=p,
        delta=delta,
        naive=_finite(naive),
        aligned=_finite(aligned),
        aligned_kind=f"estimate, {mode} masks" if aligned is not None else "",
        head_norm=_finite(head_norm),
        gap=_finite(metrics.gap_bound(delta, naive, head_norm)),
        gap_aligned=None if aligned is None else _finite(metrics.gap_bound(delta, aligned, head_norm)),
        certified_fraction=cert,
        layer_norms=tuple(norms),
        between=tuple(factors),
        aligned_reason=aligned_reason,
    )


# --------------------------------------------------------------------------- rendering


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    return str(obj)


def _p_label(p: str) -> str:
    return "∞" if p == "inf" else "2"


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3e}"


def _model_name(model: nn.Module) -> str:
    from robustprune.models import model_spec

    spec = model_spec(model)
    return spec.name if spec is not None else type(model).__name__


def _settings_line(r: Report) -> str:
    data = f"data masks from {r.n_samples} samples" if r.alignment_mode == "data" else "identity masks (no data)"
    return (
        f"eps={r.eps:g}; k, eps, beta, S at that eps (sigma: singular values; nu: row l1 norms); "
        f"conv norm: {r.conv_norm}; alignment: {data}"
    )


def _layer_table(r: Report, markdown: bool) -> tuple[list[str], list[list[str]]]:
    op = r.conv_norm == "operator"
    header = ["layer", "type", "shape", "k_σ/n", "ε_σ", "β_σ", "S_σ", "k_ν/n", "ε_ν", "β_ν", "S_ν",
              "‖W‖_F", "‖W‖₂ (matricized)"]
    if op:
        header.append("‖W‖₂ (operator)")
    header.append("‖W‖∞")
    header += [f"A_{_p_label(p)}" for p in r.norms] + ["next"]
    table = []
    for row in r.rows:
        name = f"`{row.name}`" if markdown else row.name
        cells = [
            name + (" (head)" if row.is_head else ""),
            row.kind,
            "x".join(str(s) for s in row.matrix_shape),
            *_compressibility_cells(row.spectral),
            *_compressibility_cells(row.neuron),
            _fmt(row.frobenius),
            _fmt(row.norm_2_matricized),
        ]
        if op:
            cells.append(_fmt(row.norm_2_operator))
        cells.append(_fmt(row.norm_inf))
        cells += [_fmt(row.alignment.get(p)) for p in r.norms]
        cells.append(",".join(row.next_layers) or "—")
        table.append(cells)
    return header, table


def _compressibility_cells(c: Compressibility | None) -> list[str]:
    if c is None:
        return ["—"] * 4
    return [f"{c.k}/{c.n}", _fmt(c.eps), _fmt(c.beta), _fmt(c.structure_factor)]


def _bound_reasons(r: Report) -> list[str]:
    out = []
    for p in r.norms:
        b = r.bounds[p]
        if b.reason:
            out.append(f"ℓ{_p_label(p)}: {b.reason}")
        elif b.aligned_reason:
            out.append(f"ℓ{_p_label(p)} aligned: {b.aligned_reason}")
    return out
