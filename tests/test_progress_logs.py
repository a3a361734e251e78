"""Progress off a terminal: no ``\\r`` bars, one line per epoch and per job, the resume
messages reach stderr (the CLI configures the ``robustprune`` logger)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path

import torch

from robustprune import _progress
from robustprune._threads import default_threads
from robustprune.cli import main
from robustprune.train import fit

TINY = Path(__file__).parent.parent / "recipes" / "digits-tiny.toml"
SMALL = [
    "--set", "seeds=[0]", "--set", 'prune=[{method="epsilon",eps=[0.5]}]', "--set", "train.epochs=2",
    "--set", "eval.n_examples=16", "--set", "eval.n_iter=2",
]


def _run(args: list[str], log: Path) -> int:
    """``robustprune`` in this process with stderr going to the file ``log`` (not a TTY)."""
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stderr(f), contextlib.redirect_stdout(io.StringIO()):
        return main(args)


def test_recipe_log_off_a_terminal_has_no_bars_and_one_line_per_epoch_and_job(tmp_path):
    log = tmp_path / "stderr.txt"
    assert _run(["run", str(TINY), *SMALL, "--run-dir", str(tmp_path / "run")], log) == 0
    text = log.read_text(encoding="utf-8")
    assert "\r" not in text
    epochs = re.findall(r"^epoch (\d+)/(\d+): loss", text, flags=re.M)
    assert epochs == [("1", "2"), ("2", "2"), ("1", "1")]  # the dense training, then the finetune
    assert re.findall(r"^\[(\d)/2\] seed0/", text, flags=re.M) == ["1", "2"]
    assert len(text.splitlines()) < 15
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["threads"] for r in rows] == [default_threads()] * 2  # the default, recorded

    # resuming the finished run: the runner's resume message reaches stderr
    assert _run(["run", str(TINY), *SMALL, "--run-dir", str(tmp_path / "run"), "--resume"], log) == 0
    assert f"resuming {tmp_path / 'run'}: 2 of 2 models already finished" in log.read_text(encoding="utf-8")


def _tiny_fit(tmp_path: Path, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(24, 12), torch.arange(24) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    return fit(model, (loader, loader), epochs=2, lr=0.1, device="cpu", checkpoint_dir=tmp_path / "ckpt", **kw)


def test_fit_resume_message_reaches_stderr_through_the_cli_logger(tmp_path):
    log = tmp_path / "stderr.txt"
    _tiny_fit(tmp_path, progress=False)
    _run(["list", "datasets"], log)  # configures the robustprune logger: INFO to stderr
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stderr(f):
        result = _tiny_fit(tmp_path, progress=False)
    assert result.resumed_from_epoch == 2
    assert re.search(r"^resuming from .*last\.pt after epoch 2$", log.read_text(encoding="utf-8"), flags=re.M)


def test_fit_without_logging_configured_prints_one_line_per_epoch(tmp_path, monkeypatch, capsys):
    for name in ("", "robustprune"):  # no handler anywhere (pytest's own ones removed)
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    _tiny_fit(tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.findall(r"^epoch (\d)/2: loss", err, flags=re.M) == ["1", "2"]
    _tiny_fit(tmp_path, progress=False)  # progress=False: quiet
    assert capsys.readouterr().err == ""


def test_bar_is_tqdm_on_a_terminal_and_silent_elsewhere(monkeypatch):
    assert isinstance(_progress.bar(range(3), total=3), _progress.NoBar)  # captured stderr: no TTY
    assert list(_progress.bar(range(3))) == [0, 1, 2]
    monkeypatch.setattr(_progress, "interactive", lambda stream=None: True)
    from tqdm.auto import tqdm

    live = _progress.bar(total=2, disable=False)
    assert isinstance(live, tqdm)
    live.close()
    assert isinstance(_progress.bar(total=2, enabled=False), _progress.NoBar)
