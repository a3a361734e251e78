"""Paired verdicts: every pruned setting against its matched baselines.

For each pruned ``(variant, label, setting)`` the rows of its *reference* (the default
pipeline: fixed ratio, one-shot, same finetune) and of its *scratch* baseline (the same
widths trained from random initialisation) are found by label among the rows with the same
``(variant, seed, compare_key)``: pruned to the same MACs target, from the same dense model.
Robust and clean accuracy are then differenced seed by seed
(:func:`~robustprune.report.stats.paired_difference`): mean, 95% CI, verdict.

A row is never compared with itself: the reference's own rows get no reference comparison,
and the scratch rows, the bar of the scratch comparison, get no line at all. Dense rows get
no line. Seeds where either side is missing are skipped (the line says how many paired).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from robustprune.report.rows import (
    Row,
    compare_key,
    group_key,
    is_dense,
    ordered,
    reference_label,
    scratch_label,
)
from robustprune.report.stats import PairedDifference, paired_difference

__all__ = ["Comparison", "Verdict", "paired_verdicts", "verdict_table"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """One setting against one baseline (``against``, a label), paired over ``n`` seeds;
    the differences are this setting minus the baseline (fractions; × 100 for points)."""

    against: str
    n: int
    robust: PairedDifference | None
    clean: PairedDifference | None


@dataclass(frozen=True)
class Verdict:
    """A pruned setting's comparisons with its reference and its scratch baseline."""

    variant: str
    label: str
    setting: str
    reference: Comparison | None
    scratch: Comparison | None


def paired_verdicts(rows: Iterable[Row]) -> list[Verdict]:
    """The verdict of every pruned ``(variant, label, setting)`` that has a reference or a
    scratch counterpart on at least one seed, in the run's order."""
    rows = ordered(rows)
    by_id = {r["id"]: r for r in rows if "id" in r}
    index: dict[tuple[str, int, str, str], Row] = {}
    for r in rows:
        index.setdefault((r.get("variant", ""), int(r["seed"]), compare_key(r, by_id), r["label"]), r)
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        if not is_dense(r):
            groups.setdefault(group_key(r), []).append(r)
    out = []
    for (variant, label, setting), members in groups.items():
        reference = reference_label(members[0], rows)
        scratch = scratch_label(members[0])
        if label == scratch:
            continue
        ref = _compare(members, reference, index, by_id) if reference not in (None, label) else None
        scr = _compare(members, scratch, index, by_id) if scratch is not None else None
        if ref is not None or scr is not None:
            out.append(Verdict(variant, label, setting, ref, scr))
    return out


def _compare(
    members: Sequence[Row], against: str | None, index: dict[tuple[str, int, str, str], Row], by_id: dict[str, Row]
) -> Comparison | None:
    """``members`` (one row per seed) against the rows of label ``against`` with the same
    ``(variant, seed, compare_key)``; None when no seed has a counterpart."""
    assert against is not None
    mine_robust, mine_clean, theirs_robust, theirs_clean = {}, {}, {}, {}
    for m in members:
        seed = int(m["seed"])
        other = index.get((m.get("variant", ""), seed, compare_key(m, by_id), against))
        if other is None:
            continue
        mine_robust[seed], theirs_robust[seed] = m.get("robust_accuracy"), other.get("robust_accuracy")
        mine_clean[seed], theirs_clean[seed] = m["clean_accuracy"], other["clean_accuracy"]
    if not mine_clean:
        return None
    if len(mine_clean) < len(members):
        logger.debug("%s %s: %d of %d seeds have a '%s' counterpart", members[0]["label"],
                     members[0]["setting"], len(mine_clean), len(members), against)
    clean = paired_difference(mine_clean, theirs_clean)
    return Comparison(against, len(mine_clean), paired_difference(mine_robust, theirs_robust), clean)


def verdict_table(verdicts: Sequence[Verdict], *, with_variant: bool, with_robust: bool) -> list[str]:
    """The markdown lines of the paired-verdicts table (empty without verdicts)."""
    if not verdicts:
        return []
    sides = [s for s in ("reference", "scratch") if any(getattr(v, s) is not None for v in verdicts)]
    header = (["variant"] if with_variant else []) + ["method", "setting"]
    for side in sides:
        header += [f"vs {side}", "seeds"] + (["Δ robust (pts)"] if with_robust else []) + ["Δ clean (pts)"]
    align = ["---" if h in ("variant", "method", "setting") or h.startswith("vs ") else "---:" for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for v in verdicts:
        cells = ([v.variant or "–"] if with_variant else []) + [v.label, v.setting]
        for side in sides:
            c: Comparison | None = getattr(v, side)
            if c is None:
                cells += ["–", "–"] + (["–"] if with_robust else []) + ["–"]
                continue
            cells += [c.against, str(c.n)]
            if with_robust:
                cells.append(_cell(c.robust))
            cells.append(_cell(c.clean))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(diff: PairedDifference | None) -> str:
    return "–" if diff is None else f"{diff.fmt(100, 1)} {diff.verdict}"
