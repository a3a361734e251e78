"""The report: paired statistics, paired verdicts, the summary's columns and notes, the
Pareto plot, and that results files of today's (older) format still render."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from robustprune.errors import RecipeError, RobustPruneError
from robustprune.report import (
    paired_difference,
    paired_verdicts,
    plot_pareto,
    read_results,
    render_report,
    summarize,
    summary_markdown,
)
from robustprune.report.pareto import spread_coinciding
from robustprune.report.stats import BETTER, NO_DIFFERENCE, SINGLE_SEED, WORSE, t_quantile

# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (10, 2.228),
     (20, 2.086), (29, 2.045), (30, 2.042), (60, 2.000), (120, 1.980), (1000, 1.962)],
)
def test_t_quantile_matches_the_student_t_table(df: int, expected: float) -> None:
    assert t_quantile(df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_at_other_levels_and_bad_arguments() -> None:
    assert t_quantile(4, 0.99) == pytest.approx(4.604, abs=5e-4)
    assert t_quantile(1, 0.5) == pytest.approx(1.0, abs=1e-9)  # the Cauchy quartile
    with pytest.raises(ValueError):
        t_quantile(0)
    with pytest.raises(ValueError):
        t_quantile(3, 1.0)


def test_paired_difference_is_the_paired_t_interval() -> None:
    d = paired_difference({0: 0.3, 1: 0.5, 2: 0.7}, {0: 0.2, 1: 0.3, 2: 0.4})  # d = 0.1, 0.2, 0.3
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(0.2)
    assert (d.low, d.high) == (pytest.approx(0.2 - half, abs=1e-6), pytest.approx(0.2 + half, abs=1e-6))
    assert d.verdict == NO_DIFFERENCE  # the CI [-0.048, 0.448] contains 0
    assert d.fmt(100, 1) == "+20.0 [-4.8, +44.8]"


def test_verdict_is_better_or_worse_only_when_the_ci_excludes_zero() -> None:
    a = {s: 0.50 + 0.01 * s for s in range(5)}
    up = {s: v - 0.10 + (0.01 if s % 2 else -0.01) for s, v in a.items()}
    assert paired_difference(a, up).verdict == BETTER
    assert paired_difference(up, a).verdict == WORSE
    mixed = {s: v + (0.05 if s % 2 else -0.05) for s, v in a.items()}
    assert paired_difference(a, mixed).verdict == NO_DIFFERENCE


def test_a_constant_difference_has_a_degenerate_ci() -> None:
    a, b = {0: 0.7, 1: 0.6, 2: 0.3}, {0: 0.6, 1: 0.5, 2: 0.2}
    d = paired_difference(a, b)  # float noise in 0.7-0.6 vs 0.3-0.2 does not count
    assert d.low == d.high == d.mean == pytest.approx(0.1) and d.verdict == BETTER
    assert paired_difference(b, a).verdict == WORSE
    same = paired_difference(a, dict(a))
    assert (same.mean, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, NO_DIFFERENCE)


def test_pairs_by_seed_skipping_missing_seeds_and_a_single_pair_has_no_interval() -> None:
    d = paired_difference({0: 0.5, 1: 0.6, 2: 0.9, 3: None}, {1: 0.4, 2: 0.8, 3: 0.1, 4: 0.0})
    assert d.n == 2 and d.mean == pytest.approx(0.15)  # seeds 1 and 2 only
    one = paired_difference({0: 0.5, 1: 0.6}, {1: 0.4})
    assert (one.n, one.low, one.high, one.verdict) == (1, None, None, SINGLE_SEED)
    assert one.fmt() == "+20.0"
    assert paired_difference({0: 0.5}, {1: 0.4}) is None


# --------------------------------------------------------------------------- synthetic rows


def _row(seed: int, label: str, order: int, clean: float, robust: float | None, **extra) -> dict:
    method = extra.pop("method", label)
    macs_kept = extra.pop("macs_kept", 1.0 if method == "dense" else 0.5)
    setting = extra.pop("setting", "–" if method == "dense" else "target_macs=0.5")
    return {
        "id": f"seed{seed}/{label}/{setting}", "variant": "", "seed": seed, "order": order,
        "label": label, "method": method, "setting": setting, "setting_key": setting,
        "macs": int(1000 * macs_kept), "params": int(500 * macs_kept), "macs_kept": macs_kept,
        "params_kept": macs_kept, "clean_accuracy": clean, "robust_accuracy": robust, **extra,
    }


def _new(seed: int, label: str, order: int, clean: float, robust: float, **extra) -> dict:
    """A row of the new format: compare_key, reference, scratch, cost, pruned_nothing."""
    dense = label == "dense"
    fields = {
        "compare_key": "dense" if dense else "target_macs=0.5",
        "reference": None if dense else "fixed", "scratch": None if dense else "scratch",
        "cost": {"epochs": 10 if dense else 12, "attack_steps": 100 if dense else 120},
        "pruned_nothing": False, "target_macs": None if dense else 0.5,
    }
    return _row(seed, label, order, clean, robust, **{**fields, **extra})


def _new_run(seeds=(0, 1, 2)) -> list[dict]:
    rows = []
    for s in seeds:
        rows += [
            _new(s, "dense", 0, 0.90, 0.50),
            _new(s, "epsilon", 1, 0.80 + 0.01 * s, 0.45 + 0.01 * (s % 2), method="epsilon"),
            _new(s, "fixed", 2, 0.80 + 0.01 * s, 0.40 + 0.01 * s),
            _new(s, "scratch", 3, 0.70 + 0.01 * s, 0.42, cost={"epochs": 22, "attack_steps": 220}),
        ]
    return rows


def test_verdicts_against_reference_and_scratch_paired_by_seed() -> None:
    verdicts = paired_verdicts(_new_run())
    assert [(v.label, v.reference is not None, v.scratch is not None) for v in verdicts] == [
        ("epsilon", True, True),
        ("fixed", False, True),  # the reference is not compared with itself; scratch gets no line
    ]
    eps = verdicts[0]
    assert eps.reference.against == "fixed" and eps.reference.n == 3
    assert eps.reference.clean.mean == 0.0 and eps.reference.clean.verdict == NO_DIFFERENCE
    assert eps.reference.robust.mean == pytest.approx(0.05 - 0.01 * 2 / 3)
    assert eps.scratch.clean.verdict == BETTER and eps.scratch.clean.mean == pytest.approx(0.10)


def test_verdicts_skip_seeds_without_a_counterpart_and_other_compare_keys() -> None:
    rows = [r for r in _new_run() if not (r["label"] == "fixed" and r["seed"] == 2)]
    rows.append(_new(0, "fixed", 2, 0.1, 0.1, setting="target_macs=0.25", compare_key="target_macs=0.25"))
    eps = paired_verdicts(rows)[0]
    assert eps.reference.n == 2 and eps.scratch.n == 3
    assert eps.reference.clean.mean == 0.0


def test_old_rows_fall_back_to_the_first_fixed_entry_and_no_scratch() -> None:
    rows = []
    for s in (0, 1):
        rows += [
            _row(s, "dense", 0, 0.9, 0.5),
            _row(s, "epsilon", 1, 0.8, 0.45 + 0.1 * s, setting="ε=0.5", setting_key="eps=0.5"),
            _row(s, "fixed", 2, 0.7 - 0.1 * s, 0.4, setting="matched to epsilon ε=0.5",
                 setting_key="match=epsilon:eps=0.5", matched_to=f"seed{s}/epsilon/ε=0.5", target_macs=0.5),
            _row(s, "fixed-2", 3, 0.1, 0.1, method="fixed", setting="matched to epsilon ε=0.5",
                 matched_to=f"seed{s}/epsilon/ε=0.5", target_macs=0.5),
        ]
    verdicts = paired_verdicts(rows)
    assert [(v.label, v.reference.against if v.reference else None, v.scratch) for v in verdicts] == [
        ("epsilon", "fixed", None), ("fixed-2", "fixed", None),
    ]
    assert verdicts[0].reference.clean.mean == pytest.approx(0.15)
    assert verdicts[0].reference.robust.mean == pytest.approx(0.1)


def test_summary_has_cost_columns_robust_over_clean_last_and_verdict_words() -> None:
    text = summary_markdown(_new_run())
    header = next(line for line in text.splitlines() if line.startswith("| method | setting | MACs"))
    assert header == ("| method | setting | MACs kept | params | clean acc (%) | robust acc (%) | epochs "
                      "| attack steps | seeds | robust/clean |")
    assert "| dense | – | 100.0 ± 0.0% | 500 (100%) | 90.0 ± 0.0 | 50.0 ± 0.0 | 10 | 100 | 3 |" in text
    assert "| scratch | target_macs=0.5 |" in text and "| 22 | 220 | 3 |" in text
    assert "## Paired verdicts" in text
    line = next(line for line in text.splitlines() if line.startswith("| epsilon | target_macs=0.5 | fixed |"))
    # robust: d = 5, 5, 3 pts vs fixed, 3, 4, 3 vs scratch; t(2) = 4.303
    assert line == (
        "| epsilon | target_macs=0.5 | fixed | 3 | +4.3 [+1.5, +7.2] better | +0.0 [+0.0, +0.0] no significant "
        "difference | scratch | 3 | +3.3 [+1.9, +4.8] better | +10.0 [+10.0, +10.0] better |"
    )
    assert "robust/clean (last column) is secondary" in text
    assert "dense share included" in text


def test_a_cost_that_differs_between_seeds_shows_mean_and_std() -> None:
    rows = _new_run(seeds=(0, 1))
    rows[1]["cost"] = {"epochs": 14, "attack_steps": 140}
    summary = {s.label: s for s in summarize(rows)}
    assert summary["epsilon"].epochs.mean == 13 and summary["dense"].attack_steps.mean == 100
    assert "| 13 ± 1 | 130 ± 14 |" in summary_markdown(rows)


def test_a_setting_that_pruned_nothing_is_flagged_in_the_table_and_the_notes() -> None:
    rows = _new_run(seeds=(0, 1))
    rows.append(_new(0, "epsilon", 4, 0.9, 0.5, setting="ε=0.01", pruned_nothing=True, macs_kept=1.0))
    rows.append(_new(1, "epsilon", 4, 0.8, 0.4, setting="ε=0.01", macs_kept=0.98))
    old = _row(0, "epsilon-old", 5, 0.9, 0.5, setting="ε=0.001", pruned_macs_kept=1.0, macs_kept=1.0)
    text = summary_markdown([*rows, old])
    assert "| epsilon | ε=0.01 (pruned nothing on 1 of 2 seeds) |" in text
    assert "| epsilon-old | ε=0.001 (pruned nothing) |" in text
    assert "Pruned nothing" in text and "epsilon ε=0.01 (seed 0)" in text and "epsilon-old ε=0.001 (seed 0)" in text
    assert summarize([old])[0].pruned_nothing == (0,)
    assert "pruned nothing" not in summary_markdown(_new_run())


def test_clean_only_rows_have_no_robust_anywhere() -> None:
    rows = [{**r, "robust_accuracy": None} for r in _new_run()]
    text = summary_markdown(rows)
    assert "robust" not in text and "Δ clean (pts)" in text


# --------------------------------------------------------------------------- today's files still render

#: a digits-tiny run (2 seeds) in today's results.jsonl format:
#: (seed, order, label, method, setting_key, macs, params, clean/360, robust/48, robust-clean/48)
TODAY = [
    (0, 0, "dense", "dense", "-", 89418, 5178, 285, 9, 39),
    (0, 1, "epsilon", "epsilon", "eps=0.5", 53242, 3022, 255, 8, 36),
    (0, 2, "epsilon+beta", "epsilon", "eps=0.5", 53242, 3022, 255, 8, 36),
    (0, 3, "fixed", "fixed", "match=epsilon:eps=0.5", 53242, 3022, 255, 8, 36),
    (0, 4, "global", "global", "match=epsilon:eps=0.5", 53748, 2838, 225, 8, 31),
    (1, 0, "dense", "dense", "-", 89418, 5178, 286, 13, 39),
    (1, 1, "epsilon", "epsilon", "eps=0.5", 53242, 3022, 247, 11, 32),
    (1, 2, "epsilon+beta", "epsilon", "eps=0.5", 53242, 3022, 247, 11, 32),
    (1, 3, "fixed", "fixed", "match=epsilon:eps=0.5", 53242, 3022, 247, 11, 32),
    (1, 4, "global", "global", "match=epsilon:eps=0.5", 53748, 2838, 215, 8, 27),
]


def _today_row(seed, order, label, method, key, macs, params, clean, robust, robust_clean) -> dict:
    setting = {"-": "–", "eps=0.5": "ε=0.5"}.get(key, "matched to epsilon ε=0.5")
    row = {
        "id": f"seed{seed}/{label}/{key}", "variant": "", "variant_index": 0, "seed": seed, "order": order,
        "label": label, "method": method, "setting": setting, "setting_key": key,
        "settings": {"eps": 0.5} if key == "eps=0.5" else {}, "prune": None, "fit": None,
        "pruned_macs_kept": macs / 89418, "macs": macs, "params": params, "macs_kept": macs / 89418,
        "params_kept": params / 5178, "clean_accuracy": clean / 360, "robust_accuracy": robust / 48,
        "robust_clean_accuracy": robust_clean / 48, "robust_over_clean": robust / robust_clean,
        "latency_ms": {}, "checkpoint": f"checkpoints/seed{seed}/{label}.pt", "timing_s": {}, "seconds": 1.0,
        "eval_settings": {"norm": "Linf", "eps": 0.1, "attacks": ["apgd-ce", "apgd-t"], "n_iter": 10,
                          "n_clean": 360, "n": 48},
    }
    if key.startswith("match="):
        row.update(settings={"target_macs": 53242 / 89418}, matched_to=f"seed{seed}/epsilon/eps=0.5",
                   target_macs=53242 / 89418)
    return row


def test_a_results_file_of_todays_format_still_renders(tmp_path: Path) -> None:
    run = tmp_path / "digits-tiny" / "20250101-000000"
    run.mkdir(parents=True)
    lines = [json.dumps(_today_row(*t), ensure_ascii=False) for t in TODAY]
    (run / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = render_report(run)
    assert text == (run / "summary.md").read_text(encoding="utf-8")
    assert text.startswith("# digits-tiny (20250101-000000)\n")
    assert "| epsilon | ε=0.5 | 59.5 ± 0.0% | 3.0k (58%) | 69.7 ± 1.6 | 19.8 ± 4.4 | 2 | 0.283 ± 0.086 |" in text
    assert "epochs" not in text  # no cost recorded: no cost columns
    assert "| epsilon | ε=0.5 | fixed | 2 | +0.0 [+0.0, +0.0] no significant difference |" in text
    assert "| global | matched to epsilon ε=0.5 | fixed | 2 |" in text and "worse |" in text
    assert "epsilon+beta | ε=0.5 | fixed" not in text  # fixed was matched to epsilon, not to it
    assert "largest relative MACs mismatch: 0.95%" in text
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_results(run)) == len(TODAY)


# --------------------------------------------------------------------------- pareto.png


def test_spread_coinciding_separates_only_coinciding_points() -> None:
    points = [(50.0, 80.0), (50.0, 80.0), (50.1, 80.05), (70.0, 60.0), (50.0, 40.0)]
    offsets = spread_coinciding(points, x_tol=0.5, y_tol=0.5, step=1.0)
    assert offsets == [-1.0, 0.0, 1.0, 0.0, 0.0]
    assert spread_coinciding([], x_tol=1, y_tol=1, step=1) == []


def test_pareto_is_written_with_coinciding_points_and_many_series(tmp_path: Path) -> None:
    rows = _new_run()
    for i in range(6):  # six more series with identical results: legend outside, points spread
        rows += [{**r, "label": f"copy{i}", "order": 10 + i} for r in rows if r["label"] == "fixed"]
    out = plot_pareto(rows, tmp_path / "pareto.png", title="coinciding")
    assert out == tmp_path / "pareto.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the atomic write cleaned up
    clean_only = [{**r, "robust_accuracy": None} for r in rows[:4]]
    assert plot_pareto(clean_only, tmp_path / "clean.png").stat().st_size > 0


def test_a_run_with_analysis_writes_rows_that_read_back(tmp_path: Path) -> None:
    """The analysis table of a row holds numbers and the report's path (text): reading the
    results back (resume, report) accepts it, and refuses a number where the path belongs."""
    from robustprune.recipe import parse_recipe, run_recipe

    raw = {
        "name": "analysed", "seeds": [0], "output": str(tmp_path / "runs"), "threads": 1,
        "data": {"name": "digits", "batch_size": 128}, "model": {"name": "fcn", "width": 16, "depth": 1},
        "train": {"epochs": 1, "lr": 0.1}, "prune": [{"method": "spectral", "eps": [0.3]}],
        "eval": {"eps": 0.1, "attacks": ["apgd-ce"], "n_examples": 8, "n_iter": 2, "latency": False},
        "analysis": {"models": "dense", "n_examples": 8},
    }
    result = run_recipe(parse_recipe(raw, source="test"), run_dir=tmp_path / "run", progress=False)
    dense = next(r for r in result.rows if r["label"] == "dense")
    assert dense["analysis"]["report"].startswith("analysis/") and (tmp_path / "run" / dense["analysis"]["report"]).is_file()
    assert [r["id"] for r in read_results(tmp_path / "run")] == [r["id"] for r in result.rows]
    bad = {**dense, "analysis": {**dense["analysis"], "report": 3}}
    (tmp_path / "run" / "results.jsonl").write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="field 'analysis.report' must be str"):
        read_results(tmp_path / "run")


# --------------------------------------------------------------------------- bad input

_GOOD = {0: 0.5, 1: 0.6, 2: 0.7}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: paired_difference({0: math.nan, 1: 0.5, 2: 0.6}, _GOOD), r"a\[0\] must be a finite number"),
        (lambda: paired_difference(_GOOD, {0: math.inf, 1: 0.5, 2: 0.6}), r"b\[0\] must be a finite number"),
        (lambda: paired_difference({0: "0.9", 1: 0.5}, _GOOD), r"a\[0\] must be a finite number"),
        (lambda: paired_difference({0: True, 1: 0.5}, _GOOD), r"a\[0\] must be a finite number"),
        (lambda: paired_difference([0.5, 0.6], _GOOD), r"a must map each seed"),
        (lambda: paired_difference(None, _GOOD), r"a must map each seed"),
        (lambda: paired_difference({0: 0.5, "1": 0.6}, _GOOD), r"seeds must be integers"),
        (lambda: paired_difference(_GOOD, _GOOD, level=1.5), r"level must be in \(0, 1\)"),
        (lambda: paired_difference(_GOOD, _GOOD, level=math.nan), r"level must be in \(0, 1\)"),
        (lambda: paired_difference({0: 0.5}, {0: 0.4}, level=True), r"level must be in \(0, 1\)"),
        (lambda: summarize([{}]), r"row 1: the row has no 'label' field"),
        (lambda: summarize("abc"), r"summarize needs a list of result rows"),
        (lambda: summarize(None), r"summarize needs a list of result rows"),
        (lambda: summarize([_row(0, "dense", 0, math.nan, None)]), r"'clean_accuracy' must be a finite number"),
        (lambda: summarize([_row(0, "dense", 0, -5.0, None)]), r"'clean_accuracy' must be in \[0, 1\]"),
        (lambda: summarize([_row(0, "dense", 0, 0.9, 1.5)]), r"'robust_accuracy' must be in \[0, 1\]"),
        (lambda: summarize([_row(0, "dense", 0, "0.9", None)]), r"'clean_accuracy' must be a finite number"),
        (lambda: summarize([{**_row(0, "dense", 0, 0.9, None), "seed": 1.7}]), r"'seed' must be int"),
        (lambda: summarize([{**_row(0, "dense", 0, 0.9, None), "macs": -1}]), r"'macs' must be in \[0, inf\]"),
        (lambda: read_results(None), r"read_results needs the path"),
        (lambda: read_results(5), r"read_results needs the path"),
    ],
)
def test_report_functions_refuse_bad_input(call, match: str) -> None:
    with pytest.raises(RobustPruneError, match=match):
        call()


def test_a_results_file_of_other_text_is_refused_not_read_as_empty(tmp_path: Path) -> None:
    """Only a row cut short (a truncated JSON object) may be skipped at the end of the file."""
    (tmp_path / "results.jsonl").write_text("hello world\n")
    with pytest.raises(RecipeError, match=r"line 1: not valid JSON"):
        read_results(tmp_path)
    (tmp_path / "results.jsonl").write_text(json.dumps(_row(0, "dense", 0, 0.9, None)) + '\n{"id": "seed0/fix')
    assert len(read_results(tmp_path)) == 1
