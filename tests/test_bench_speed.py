"""benchmarks/run_speed.py keeps running: a dry run reports every measurement with a finite ratio."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_speed():
    spec = importlib.util.spec_from_file_location("run_speed", ROOT / "benchmarks" / "run_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_speed"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("run_speed", None)


def _table(text: str) -> dict[str, list[str]]:
    """Rows of the summary table, ``measurement -> [ours, reference, ratio, target, verdict]``."""
    rows = {}
    lines = text.splitlines()
    start = lines.index("| measurement | ours | reference | ratio | target | pass/fail |")
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_dry_run_reports_every_measurement_with_a_finite_ratio(run_speed, tmp_path):
    out = tmp_path / "speed.md"
    threads = torch.get_num_threads()
    assert run_speed.main(["--dry-run", "--threads", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the global thread setting is restored
    text = out.read_text()
    assert "--dry-run" in text and "Load average" in text
    rows = _table(text)
    sizes = run_speed.DRY_RUN
    expected = (
        len(sizes.prune_models) + len(sizes.analyze_models) + len(sizes.analyze_narrow)
        + len(run_speed.bench_regularizers.configs()) - 1  # every regularizer vs the plain step
        + 1 + 1  # train, eval
        + 2 * len(run_speed.latency_batches(torch.device("cpu")))  # ε-pruned and fixed-ratio, per batch size
    )
    assert len(rows) == expected
    for name, (ours, reference, ratio, target, verdict) in rows.items():
        for cell in (ours, reference, ratio):
            value = float(cell.split()[0].rstrip("x"))
            assert math.isfinite(value) and value > 0, name
        assert target == "—" or target[0] in "≤≥", name
        assert verdict == ("info" if target == "—" else verdict) and verdict in ("pass", "**fail**", "info"), name
    sections = [line for line in text.splitlines() if line.startswith("**") and "--only" in line]
    assert [s.split("`--only ")[1].split("`")[0] for s in sections] == list(run_speed.MEASUREMENTS)
    targets = [r[3] for r in rows.values() if r[3] != "—"]
    assert "≥ 1.5x" in targets and "≤ 3x" in targets and "≤ 1.05x" in targets
    narrow = [r for name, r in rows.items() if "narrow" in name]
    assert len(narrow) == len(sizes.analyze_narrow) and all(r[4] == "info" for r in narrow)


def test_only_selects_measurements_and_dry_run_writes_nothing_by_default(run_speed, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_speed, "RESULTS", tmp_path)
    assert run_speed.main(["--dry-run", "--threads", "1", "--only", "prune"]) == 0
    rows = _table(capsys.readouterr().out)
    assert len(rows) == len(run_speed.DRY_RUN.prune_models)
    assert all("rp.prune" in name for name in rows)
    assert list(tmp_path.iterdir()) == []


def test_cuda_without_a_gpu_is_refused_with_a_message(run_speed, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as exc:
        run_speed.main(["--dry-run", "--device", "cuda"])
    assert exc.value.code == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
