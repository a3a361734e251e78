"""What :func:`robustprune.analysis.analyze` returns and how it is rendered.

:class:`Report` holds one :class:`LayerRow` per prunable layer, one :class:`NetworkBound`
per norm and the dominant-direction audit; ``str(report)`` is a text table,
:meth:`Report.to_markdown` a markdown one and :meth:`Report.to_dict` / :meth:`Report.to_json`
are JSON-serializable (non-finite numbers become ``None``). Values computed with data masks
are estimates and are labelled so wherever they are printed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from robustprune.errors import InvalidArgumentError
from robustprune.metrics import AuditResult, Compressibility

__all__ = ["LayerRow", "NetworkBound", "Report", "finite", "fmt", "p_label"]


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
    DESIGN.md and is an *estimate*, not a bound (``aligned_kind`` says which masks).
    ``gap`` is the gap bound that holds for the model's head, ``gap_factor * delta * naive *
    head_norm``: ``head_loss`` is ``"logistic"`` for a one-logit head (factor 1, the paper's
    Corollary 3.3) and ``"softmax"`` for a K-class cross-entropy head (factor 2 in
    l-infinity, sqrt(2) in l2: ``||softmax - e_y||_1 <= 2``). ``gap_aligned`` is the same
    with the aligned estimate (an estimate). ``kinds`` says, per reported number, whether it
    is an upper bound, an estimate or a certificate (it goes into :meth:`Report.to_dict`)."""

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
    head_loss: str = ""
    gap_factor: float | None = None
    kinds: dict[str, str] = field(default_factory=dict)


def bound_kinds(head_loss: str, p: str, aligned_kind: str, certified: bool) -> dict[str, str]:
    """What each number of a :class:`NetworkBound` is: an upper bound, an estimate (the
    aligned values, from data or identity masks) or a certificate."""
    factor = "" if head_loss == "logistic" else ("2 * " if p == "inf" else "sqrt(2) * ")
    head = (
        "binary logistic head (Corollary 3.3)" if head_loss == "logistic"
        else "softmax cross-entropy head, ||softmax - e_y||_1 <= 2"
    )
    kinds = {
        "naive": "upper bound (always valid)",
        "gap": f"upper bound for a {head}: {factor}delta * naive * head_norm",
    }
    if aligned_kind:
        kinds["aligned"] = f"{aligned_kind}; not a bound"
        kinds["gap_aligned"] = f"{aligned_kind}; not a bound: {factor}delta * aligned * head_norm"
    if certified:
        kinds["certified_fraction"] = "certificate: margin > 2 * delta * naive * head_norm"
    return kinds


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
        masks = f"{self.alignment_mode} masks"
        lines += ["", f"| norm | δ | naive L(Φ) (bound) | aligned L(Φ) (estimate, {masks}) | ‖C‖ | "
                  f"gap bound | gap (aligned, estimate) | certified |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in self.norms:
            b = self.bounds[p]
            lines.append(
                f"| ℓ{p_label(p)} | {fmt(b.delta)} | {fmt(b.naive)} | {fmt(b.aligned)} | "
                f"{fmt(b.head_norm)} | {fmt(b.gap)} | {fmt(b.gap_aligned)} | {fmt(b.certified_fraction)} |"
            )
        reasons = _bound_reasons(self) + _gap_lines(self)
        if reasons:
            lines += [""] + [f"- {r}" for r in reasons]
        if self.audit:
            lines += ["", "| audit | δ | clean | +δv₁ | −δv₁ | both signs | random direction |",
                      "|---|---|---|---|---|---|---|"]
            for p, a in self.audit.items():
                lines.append(
                    f"| ℓ{p_label(p)} | {fmt(a.delta)} | {fmt(a.clean_accuracy)} | "
                    f"{fmt(a.accuracy_plus)} | {fmt(a.accuracy_minus)} | {fmt(a.accuracy)} | "
                    f"{fmt(a.random_accuracy)} |"
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
                lines.append(f"l{p_label(p)}: Lipschitz bound: none ({b.reason})")
                continue
            aligned = (
                f"aligned {fmt(b.aligned)} ({b.aligned_kind}; not a bound)" if b.aligned is not None
                else f"aligned: none ({b.aligned_reason})"
            )
            gap_est = "" if b.gap_aligned is None else f", aligned gap estimate {fmt(b.gap_aligned)}"
            cert = "" if b.certified_fraction is None else f", certified {fmt(b.certified_fraction)}"
            lines.append(
                f"l{p_label(p)}: L(Phi) naive {fmt(b.naive)} (upper bound), {aligned}; "
                f"||C|| {fmt(b.head_norm)}; gap bound at delta={fmt(b.delta)}: {fmt(b.gap)} "
                f"({_gap_formula(b)}){gap_est}{cert}"
            )
        if self.audit:
            for p, a in self.audit.items():
                lines.append(
                    f"audit l{p_label(p)} delta={fmt(a.delta)} (n={a.n}): clean {fmt(a.clean_accuracy)}, "
                    f"+-delta*v1 {fmt(a.accuracy)} (+ {fmt(a.accuracy_plus)}, - {fmt(a.accuracy_minus)}), "
                    f"random direction {fmt(a.random_accuracy)}"
                )
        elif self.audit_reason:
            lines.append(f"audit: {self.audit_reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------- rendering


def finite(value: float | None) -> float | None:
    """``value`` as a float, ``None`` when missing or not finite."""
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


def p_label(p: str) -> str:
    """The norm's subscript as printed: ``"2"`` or ``"∞"``."""
    return "∞" if p == "inf" else "2"


def fmt(value: float | None) -> str:
    """A number as tables print it: 4 significant digits, large and small ones in short
    scientific notation (``5.117e7``, ``2.5e-5``, never ``51166864.902``), ``—`` when
    missing."""
    if value is None:
        return "—"
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


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
    header += [f"A_{p_label(p)}" for p in r.norms] + ["next"]
    table = []
    for row in r.rows:
        name = f"`{row.name}`" if markdown else row.name
        cells = [
            name + (" (head)" if row.is_head else ""),
            row.kind,
            "x".join(str(s) for s in row.matrix_shape),
            *_compressibility_cells(row.spectral),
            *_compressibility_cells(row.neuron),
            fmt(row.frobenius),
            fmt(row.norm_2_matricized),
        ]
        if op:
            cells.append(fmt(row.norm_2_operator))
        cells.append(fmt(row.norm_inf))
        cells += [fmt(row.alignment.get(p)) for p in r.norms]
        cells.append(",".join(row.next_layers) or "—")
        table.append(cells)
    return header, table


def _compressibility_cells(c: Compressibility | None) -> list[str]:
    if c is None:
        return ["—"] * 4
    return [f"{c.k}/{c.n}", fmt(c.eps), fmt(c.beta), fmt(c.structure_factor)]


def _gap_formula(b: NetworkBound) -> str:
    """How the gap bound of ``b`` was formed, for the head it holds for."""
    if b.head_loss == "logistic":
        return "binary logistic head: delta*L*||c||"
    factor = "2" if b.p == "inf" else "sqrt(2)"
    return f"softmax cross-entropy head: {factor}*delta*L*||C||"


def _gap_lines(r: Report) -> list[str]:
    """The markdown lines that say which gap bound holds and what the estimates are."""
    out = [f"ℓ{p_label(p)} gap bound: {_gap_formula(r.bounds[p])}" for p in r.norms if r.bounds[p].gap is not None]
    if any(r.bounds[p].aligned is not None for p in r.norms):
        out.append(
            f"aligned L(Φ) and aligned gap are estimates from {r.alignment_mode} masks, not bounds"
        )
    return out


def _bound_reasons(r: Report) -> list[str]:
    out = []
    for p in r.norms:
        b = r.bounds[p]
        if b.reason:
            out.append(f"ℓ{p_label(p)}: {b.reason}")
        elif b.aligned_reason:
            out.append(f"ℓ{p_label(p)} aligned: {b.aligned_reason}")
    return out
