"""bench_train.py / bench_eval.py print by default and write only where ``--out`` says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_eval  # noqa: E402
import bench_train  # noqa: E402


def _fake_main(argv, monkeypatch):
    calls = []

    def measure(settings, repeats, device):
        calls.append((settings, repeats, device))
        return {"value": 1}

    monkeypatch.setattr(bench_train, "RESULTS", Path("/nonexistent/results"))
    bench_train.cpu_main("Doc line.", "bench_x.py", measure, lambda r, cmd: f"| {cmd} | {r['value']} |",
                         "QUICK", "FULL", "x.md", "sec", "Title", "repeats", argv)
    return calls


def test_default_prints_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = _fake_main([], monkeypatch)
    assert calls == [("FULL", 9, "cpu")]
    assert "| python benchmarks/bench_x.py | 1 |" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_out_writes_the_section_there(tmp_path, monkeypatch):
    out = tmp_path / "mine.md"
    out.write_text("# Mine\n\n<!-- begin:sec -->\nold\n<!-- end:sec -->\n\nkept\n")
    calls = _fake_main(["--quick", "--out", str(out)], monkeypatch)
    assert calls == [("QUICK", 5, "cpu")]
    text = out.read_text()
    assert "| python benchmarks/bench_x.py --quick | 1 |" in text and "old" not in text and "kept" in text


@pytest.mark.parametrize("module", [bench_train, bench_eval])
def test_scripts_document_out(module, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert "--out" in capsys.readouterr().out
    assert "--out benchmarks/results/" in module.__doc__
