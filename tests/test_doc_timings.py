"""benchmarks/doc_timings.py: the commands it times are the documented ones, and it records them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import doc_timings  # noqa: E402


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\\n", " "))


@pytest.mark.parametrize("cmd", [c for c in doc_timings.COMMANDS if c.command.startswith("robustprune run")],
                         ids=lambda c: c.name)
def test_timed_recipe_commands_are_the_documented_ones(cmd):
    files = [w.split(" (")[0].strip() for w in cmd.where.split(",")]
    assert any(_flat(cmd.command) in _flat((ROOT / f).read_text()) for f in files), (cmd.name, files)


def test_every_quoted_file_exists_and_names_are_unique():
    assert len(doc_timings.BY_NAME) == len(doc_timings.COMMANDS)
    for c in doc_timings.COMMANDS:
        assert c.quoted_s > 0
        for w in c.where.split(","):
            assert (ROOT / w.split(" (")[0].strip()).is_file(), c


def test_dry_run_lists_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert doc_timings.main(["--dry-run", "--only", "digits-tiny", "apb-smoke", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "robustprune run recipes/digits-tiny.toml" in text and "apb-smoke" in text
    assert "digits-cnn" not in text and not out.exists()


def test_measure_records_time_and_failures_and_keeps_other_rows(tmp_path):
    ok = doc_timings.Timed("ok", "true", "1 s", 1.0, "README.md")
    slow = doc_timings.Timed("slow", "sleep 0.3", "0.1 s", 0.1, "README.md")
    bad = doc_timings.Timed("bad", "exit 3", "1 s", 1.0, "README.md")
    rows = {c.name: list(doc_timings.measure(c, tmp_path, timeout=30).values()) for c in (ok, slow, bad)}
    assert rows["ok"][6] == "ok" and rows["slow"][6].startswith("too slow") and rows["bad"][6] == "FAILED"
    assert "exit 3" in rows["bad"][4]
    stopped = doc_timings.measure(doc_timings.Timed("s", "sleep 5", "1 s", 1.0, "README.md"), tmp_path, timeout=0.5)
    assert "stopped" in stopped["measured"]
    out = tmp_path / "t.md"
    names = [c.name for c in doc_timings.COMMANDS[:2]]
    doc_timings.write_table(out, {names[0]: [f"`{names[0]}`", *rows["ok"][1:]],
                                  names[1]: [f"`{names[1]}`", *rows["bad"][1:]]})
    back = doc_timings.read_rows(out)
    assert list(back) == names and back[names[1]][6] == "FAILED"
