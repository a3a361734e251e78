"""What a pruner decides and what it did, as plain data.

:class:`Plan` is a validated pruning decision for one model (one :class:`GroupPlan` per
dependency group or layer); ``Pruner.apply(model, plan)`` executes it and returns a
:class:`PruningReport` (one :class:`ReportRow` per group, torch-pruning's MACs/params before
and after), which renders as text, markdown and JSON.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GroupPlan", "Plan", "ReportRow", "PruningReport", "format_value"]


@dataclass(frozen=True)
class GroupPlan:
    """What happens to one dependency group (channels) or one layer (spectral).

    ``name`` is the group's root layer (for attention, the output projection whose inputs
    carry the head dimensions), ``layers`` the Linear/Conv layers whose outputs shrink,
    ``total`` the number of prunable units ``n`` (per channel group: attention heads and
    grouped convolutions prune the same unit in every group), ``keep`` the kept unit indices
    (sorted), ``eps`` the achieved ``eps_q(theta, k)`` and ``beta`` the dispersion
    ``beta_q(theta, k)`` of the kept set, ``target`` the ε asked for (None for ratio-based
    pruners). For the spectral pruner a unit is a singular direction and ``keep`` is
    ``range(rank)``.
    """

    name: str
    layers: tuple[str, ...]
    total: int
    keep: tuple[int, ...]
    eps: float
    beta: float
    target: float | None = None
    note: str = ""
    root_out: bool = True
    channel_groups: int = 1

    @property
    def kept(self) -> int:
        return len(self.keep)

    @property
    def pruned_units(self) -> tuple[int, ...]:
        kept = set(self.keep)
        return tuple(i for i in range(self.total) if i not in kept)

    def prune_indices(self) -> list[int]:
        """Indices to remove, relative to the root layer's current width (one per unit and
        channel group), sorted unique Python ints as torch-pruning expects."""
        units = self.pruned_units
        return sorted(u + g * self.total for g in range(self.channel_groups) for u in units)

    def row(self) -> ReportRow:
        return ReportRow(self.name, self.layers, self.kept, self.total, self.target, self.eps, self.beta, self.note)


@dataclass(frozen=True)
class ReportRow:
    """One line of a :class:`PruningReport`: ``kept``/``total`` units, target and achieved ε, β."""

    name: str
    layers: tuple[str, ...]
    kept: int
    total: int
    target: float | None
    eps: float
    beta: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": list(self.layers),
            "kept": self.kept,
            "total": self.total,
            "target_eps": self.target,
            "eps": self.eps,
            "beta": self.beta,
            "note": self.note,
        }


@dataclass(frozen=True)
class Plan:
    """A validated pruning decision for one model; ``Pruner.apply(model, plan)`` executes it.

    ``kind`` is ``"channels"`` (structured channel pruning) or ``"rank"`` (spectral).
    ``macs_before``/``params_before`` are torch-pruning's counts of the dense model;
    ``macs_planned`` is the predicted count after pruning when it was computed (target-MACs
    mode). ``example_inputs`` are the (checked) inputs the plan was made with and
    ``output_signature`` the output shapes ``apply`` must reproduce.
    """

    method: str
    kind: str
    setting: dict[str, Any]
    groups: tuple[GroupPlan, ...]
    macs_before: int
    params_before: int
    macs_planned: int | None = None
    example_inputs: Any = field(default=None, repr=False, compare=False)
    output_signature: Any = field(default=None, repr=False, compare=False)

    @property
    def kept_units(self) -> int:
        return sum(g.kept for g in self.groups)

    @property
    def total_units(self) -> int:
        return sum(g.total for g in self.groups)


@dataclass(frozen=True)
class PruningReport:
    """What a pruner did: per-group rows and torch-pruning's MACs/params before and after."""

    method: str
    setting: dict[str, Any]
    rows: tuple[ReportRow, ...]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    seconds: float = 0.0
    #: the MACs of the model before its first pruning step (``robustprune_history``); equal to
    #: ``macs_before`` for a first prune, None when an older history did not record it
    macs_original: int | None = None

    @classmethod
    def from_plan(cls, plan: Plan, *, macs_after: int, params_after: int, seconds: float,
                  macs_original: int | None = None) -> PruningReport:
        """The report of an applied ``plan``: one row per group, counts before and after."""
        return cls(
            method=plan.method,
            setting=dict(plan.setting),
            rows=tuple(g.row() for g in plan.groups),
            macs_before=plan.macs_before,
            macs_after=macs_after,
            params_before=plan.params_before,
            params_after=params_after,
            seconds=seconds,
            macs_original=macs_original,
        )

    @property
    def macs_kept(self) -> float:
        """``macs_after / macs_before``."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def macs_kept_of_original(self) -> float | None:
        """``macs_after / macs_original``: what is left of the unpruned model after
        repeated ``prune`` calls (each one prunes the current model); None if unknown."""
        return self.macs_after / self.macs_original if self.macs_original else None

    @property
    def params_kept(self) -> float:
        """``params_after / params_before``."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable summary (rows without the kept indices)."""
        return {
            "method": self.method,
            "setting": _plain(self.setting),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_kept": self.macs_kept,
            "macs_original": self.macs_original,
            "macs_kept_of_original": self.macs_kept_of_original,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_kept": self.params_kept,
            "seconds": self.seconds,
            "rows": [r.to_dict() for r in self.rows],
        }

    def _header(self) -> str:
        setting = ", ".join(
            f"{k}={format_value(v)}" + (f" ({self.setting['round_to_default']} default)" if k == "round_to"
                                        and self.setting.get("round_to_default") else "")
            for k, v in self.setting.items() if v is not None and k not in ("ignored_layers", "round_to_default")
        )
        again = self.macs_original is not None and self.macs_original != self.macs_before
        of_original = f"; {self.macs_kept_of_original:.1%} of the original {_human(self.macs_original)}" if again else ""
        return (
            f"{self.method} pruning ({setting})\n"
            f"MACs {_human(self.macs_before)} -> {_human(self.macs_after)} ({self.macs_kept:.1%}{of_original}), "
            f"params {_human(self.params_before)} -> {_human(self.params_after)} ({self.params_kept:.1%})"
        )

    def _table(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            name = r.name if len(r.layers) <= 1 else f"{r.name} (+{len(r.layers) - 1} coupled)"
            out.append(
                [
                    name,
                    f"{r.kept}/{r.total}",
                    "-" if r.target is None else f"{r.target:.4g}",
                    f"{r.eps:.4f}",
                    f"{r.beta:.4f}",
                    r.note,
                ]
            )
        return out

    def __str__(self) -> str:
        header = ["group", "kept", "target ε", "ε", "β", "note"]
        rows = self._table()
        if not any(r[-1] for r in rows):
            header, rows = header[:-1], [r[:-1] for r in rows]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = [self._header(), ""]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        header = ["group", "kept", "target ε", "ε", "β", "note"]
        lines = [self._header().replace("\n", "  \n"), "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * 4 + ["---"]) + "|")
        for r in self._table():
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        return "\n".join(lines)



# --------------------------------------------------------------------------- formatting


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def format_value(v: Any) -> str:
    """A setting's value as reports and reprs show it (floats to 4 digits, long lists counted)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 4:
        return f"[{len(v)} items]"
    return str(v)


def _plain(v: Any) -> Any:
    """JSON-ready copy: tuples -> lists, numbers -> Python numbers, other objects -> str."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return repr(v)
