"""The ``robustprune`` console script: every subcommand on a tiny checkpoint, exit codes,
one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from robustprune.checkpoint import load_pruned, save_pruned
from robustprune.cli import build_parser, main
from robustprune.data import dataset_info
from robustprune.models import create_model

TINY_RECIPE = """
name = "cli-tiny"
seeds = [0]
[data]
name = "digits"
batch_size = 256
[model]
name = "cnn-small"
widths = [8, 16]
convs_per_stage = 1
[train]
epochs = 1
[[prune]]
method = "epsilon"
eps = [0.4]
[eval]
eps = 0.05
attacks = ["apgd-ce"]
n_examples = 16
n_iter = 2
latency = false
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    info = dataset_info("digits")
    torch.manual_seed(0)
    model = create_model(
        "cnn-small", num_classes=info.num_classes, input_shape=info.input_shape,
        mean=info.mean, std=info.std, widths=(8, 16), convs_per_stage=1,
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_pruned(model.eval(), path, meta={"data": {"name": "digits", "options": {}}})
    return path


def test_list_prints_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models"]) == 0
    assert "cnn-small" in capsys.readouterr().out.split()
    assert main(["list", "datasets", "dig*"]) == 0
    assert capsys.readouterr().out.split() == ["digits"]


def test_analyze_a_checkpoint_prints_the_report(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--checkpoint", str(checkpoint), "--n-examples", "16", "--delta", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "L(Phi) naive" in out and "audit" in out


def test_analyze_a_registered_model_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["analyze", "--model", "fcn", "--model-option", "width=16", "--n-examples", "0", "--format", "json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in report["rows"]][-1] == "head"


def test_prune_writes_a_smaller_loadable_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned.pt"
    assert main(["prune", "--checkpoint", str(checkpoint), "--eps", "0.4", "--out", str(out)]) == 0
    assert "kept" in capsys.readouterr().out
    dense, pruned = load_pruned(checkpoint), load_pruned(out)
    n_dense = sum(p.numel() for p in dense.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert n_pruned < n_dense
    assert pruned.robustprune_meta["data"]["name"] == "digits"
    assert pruned.robustprune_meta["prune_report"]["method"] == "epsilon"
    assert pruned(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_prune_to_a_macs_target_with_a_baseline(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fixed.pt"
    args = ["prune", "--checkpoint", str(checkpoint), "--target-macs", "0.5", "--method", "global",
            "--out", str(out), "--format", "json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["macs_after"] < report["macs_before"]


def test_eval_prints_clean_and_robust_accuracy(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--checkpoint", str(checkpoint), "--eps", "8/255", "--attacks", "apgd-ce",
            "--n-examples", "16", "--n-iter", "2", "--no-latency", "--format", "json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["robust_accuracy"] <= result["robust"]["clean_accuracy"] <= 1
    assert result["robust"]["eps"] == pytest.approx(8 / 255)
    assert result["macs"] > 0 and result["params"] > 0


def test_run_then_report_rerenders_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    run_dir = tmp_path / "run"
    args = ["run", str(recipe), "--run-dir", str(run_dir), "--no-progress", "--set", "eval.n_examples=8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| epsilon | ε=0.4 |" in printed
    (run_dir / "summary.md").unlink()
    (run_dir / "pareto.png").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "summary.md").read_text(encoding="utf-8") in capsys.readouterr().out
    assert (run_dir / "pareto.png").stat().st_size > 0
    # running into the same directory again without --resume is refused
    assert main(args) == 1
    assert "--resume" in capsys.readouterr().err


def test_run_dry_run_prints_the_resolved_config_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    assert main(["run", str(recipe), "--dry-run", "--set", "prune.eps=[0.1,0.2]"]) == 0
    out = capsys.readouterr().out
    config, plan = out.split("Plan:", 1)
    assert tomllib.loads(config)["prune"][0]["eps"] == [0.1, 0.2] and "seed0/epsilon/eps=0.2" in plan
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "missing.toml"], "does not exist"),
        (["run", "RECIPE", "--set", "train.epoch=2"], "unknown key 'train.epoch'"),
        (["run", "RECIPE", "--set", "eval.norm=L3"], "eval.norm"),
        (["report", "nowhere"], "not a directory"),
        (["eval", "--checkpoint", "missing.pt"], "does not exist"),
    ],
)
def test_user_errors_exit_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    argv = [str(recipe) if a == "RECIPE" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("robustprune: error: ") and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_errors_exit_2_and_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["prune", "--checkpoint", "x.pt"]) == 2  # --eps/--target-macs/--ratio and --out missing
    assert main(["list", "things"]) == 2
    assert main(["eval", "--checkpoint", "x.pt", "--eps", "a/b"]) == 2
    assert main(["run", "x.toml", "--threads", "0"]) == 2
    capsys.readouterr()
    for command in ("run", "analyze", "prune", "eval", "report", "list"):
        assert main([command, "--help"]) == 0
        assert "usage: robustprune " + command in capsys.readouterr().out


def test_every_subcommand_has_a_description() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"run", "analyze", "prune", "eval", "export", "report", "list"}
    for name, p in sub.choices.items():
        assert p.description, name


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "robustprune.cli", "--debug", "run", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RecipeError" in proc.stderr
