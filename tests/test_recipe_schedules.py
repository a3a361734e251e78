"""Recipes with schedules, distillation, the scratch baseline and the comparison columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustprune.checkpoint import load_pruned
from robustprune.errors import RecipeError
from robustprune.recipe import load_recipe, parse_recipe, plan_jobs, run_recipe
from robustprune.recipe.parse import entry_finetune

RECIPE = """
name = "sched"
seeds = [0, 1]
[data]
name = "digits"
batch_size = 128
validation = 0.1
[model]
name = "cnn-small"
widths = [4, 8]
[train]
epochs = 3
adversarial = { kind = "pgd", eps = 0.1, steps = 1 }
[[prune]]
method = "fixed"
target_macs = [0.5]
[[prune]]
method = "epsilon"
label = "iterative"
target_macs = [0.5]
schedule = { kind = "iterative", steps = 2 }
finetune = { epochs = 2, distill = { weight = 0.5, temperature = 2.0 } }
[[prune]]
method = "global"
label = "early"
target_macs = [0.5]
schedule = { kind = "during-training", at = 1 }
finetune = { epochs = 0 }
[[prune]]
method = "scratch"
match = "fixed"
[finetune]
epochs = 1
lr = 0.01
adversarial = { kind = "pgd", eps = 0.1, steps = 1 }
[eval]
eps = 0.1
n_examples = 16
n_iter = 3
latency = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sched")
    recipe = load_recipe(write(tmp, RECIPE))
    return run_recipe(recipe, run_dir=tmp / "run", progress=False)


def _rows(run) -> dict[str, dict]:
    return {r["id"]: r for r in run.rows}


def test_every_row_records_its_total_cost_schedule_and_comparisons(run):
    rows = _rows(run)
    assert rows["seed0/dense"]["cost"] == {"epochs": 3, "attack_steps": 3}
    fixed = rows["seed0/fixed/target_macs=0.5"]
    assert fixed["cost"] == {"epochs": 4, "attack_steps": 4}  # 3 dense + 1 finetune
    assert fixed["schedule"]["kind"] == "one-shot" and fixed["compare_key"] == "target_macs=0.5"
    assert fixed["reference"] == "fixed" and fixed["scratch"] == "scratch"
    iterative = rows["seed0/iterative/target_macs=0.5"]
    assert iterative["cost"]["epochs"] == 5 and iterative["finetune"]["distill"]["weight"] == 0.5
    assert len(iterative["prune"]["steps"]) == 2
    early = rows["seed0/early/target_macs=0.5"]
    assert early["cost"]["epochs"] == 3 and early["schedule"] == {"kind": "during-training", "steps": 1,
                                                                   "at": 1, "every": 1, "restart": False}
    scratch = rows["seed0/scratch/match=fixed:target_macs=0.5"]
    assert scratch["cost"]["epochs"] == fixed["cost"]["epochs"]
    assert scratch["compare_key"] == fixed["compare_key"]
    for row in rows.values():
        assert row["pruned_nothing"] is False


def test_scheduled_entries_reach_their_macs_target_relative_to_the_original_model(run):
    for row in run.rows:
        if row["label"] in ("iterative", "early"):
            assert abs(row["macs_kept"] - 0.5) < 0.1
            assert abs(row["pruned_macs_kept"] - row["macs_kept"]) < 1e-9


def test_the_scratch_baseline_has_the_matched_widths_and_its_own_weights(run):
    rows = _rows(run)
    fixed = load_pruned(rows["seed0/fixed/target_macs=0.5"]["checkpoint"])
    scratch = load_pruned(rows["seed0/scratch/match=fixed:target_macs=0.5"]["checkpoint"])
    a, b = fixed.state_dict(), scratch.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert not torch.equal(a["features.0.weight"], b["features.0.weight"])
    assert rows["seed0/scratch/match=fixed:target_macs=0.5"]["macs"] == rows["seed0/fixed/target_macs=0.5"]["macs"]


def test_during_training_starts_from_the_dense_runs_snapshot(run):
    snapshot = run.run_dir / "checkpoints" / "seed0" / "snapshots" / "epoch1.pt"
    assert snapshot.is_file()
    model = load_pruned(_rows(run)["seed0/early/target_macs=0.5"]["checkpoint"])
    assert len(model.robustprune_history) == 1


def test_the_summary_pairs_each_setting_with_its_reference_and_scratch(run):
    summary = run.summary
    assert "## Paired verdicts" in summary
    verdicts = summary.split("## Paired verdicts", 1)[1]
    line = next(ln for ln in verdicts.splitlines() if ln.startswith("| iterative"))
    assert "fixed" in line and "scratch" in line and "2" in line  # two paired seeds


def test_a_resumed_run_skips_finished_jobs_and_gives_the_same_rows(run, tmp_path):
    again = run_recipe(load_recipe(run.run_dir / "config.toml"), run_dir=run.run_dir, resume=True, progress=False)
    assert [r["id"] for r in again.rows] == [r["id"] for r in run.rows]
    assert json.dumps(again.rows[-1], sort_keys=True) == json.dumps(run.rows[-1], sort_keys=True)


def test_a_resumed_run_builds_a_scratch_baseline_whose_match_finished_earlier(run, tmp_path):
    """The matched model was finished by the first process; the resumed one finds its widths."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy)
    kept = [r for r in run.rows if r["label"] != "scratch"]
    (copy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    for path in (copy / "checkpoints").rglob("scratch*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = run_recipe(load_recipe(copy / "config.toml"), run_dir=copy, resume=True, progress=False)
    want = {r["id"]: r for r in run.rows if r["label"] == "scratch"}
    got = {r["id"]: r for r in again.rows if r["label"] == "scratch"}
    assert set(got) == set(want)
    for key, row in want.items():
        assert got[key]["macs"] == row["macs"] and got[key]["robust_accuracy"] == row["robust_accuracy"]


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"prune.1.eps": "[0.1]", "prune.1.target_macs": "[]"}, "schedule"),
        ({"prune.3.match": '"nope"'}, "match"),
        ({"prune.2.schedule": '{kind = "during-training", at = 5}'}, "prune\\[2\\].schedule"),
        ({"prune.0.reference": '"ghost"'}, "reference"),
        ({"compare": '{ scratch = "ghost" }'}, "compare.scratch"),
        ({"prune.3.finetune": "{ epochs = 3 }"}, "scratch"),
        ({"prune.1.finetune": "{ distill = { target = \"soft\" } }"}, "distill.target"),
        ({"prune.1.finetune": "{ epochs = -1 }"}, "finetune.epochs"),
        ({"data.validation": "1.5"}, "validation"),
    ],
)
def test_bad_schedule_scratch_and_comparison_settings_are_refused_naming_the_key(tmp_path, patch, match):
    from robustprune.recipe import parse_override

    path = write(tmp_path, RECIPE)
    with pytest.raises(RecipeError, match=match):
        load_recipe(path, [f"{k}={v}" for k, v in patch.items()])
    parse_override("a=1")  # the overrides are plain --set strings


def test_a_checkpoint_recipe_cannot_train_from_initialisation(tmp_path):
    text = RECIPE.replace('[model]\nname = "cnn-small"\nwidths = [4, 8]\n', "").replace(
        "[train]\nepochs = 3\nadversarial = { kind = \"pgd\", eps = 0.1, steps = 1 }\n",
        '[checkpoint]\npath = "dense.pt"\n')
    with pytest.raises(RecipeError, match="needs \\[train\\]"):
        load_recipe(write(tmp_path, text))


def test_entry_finetune_overrides_fields_of_the_finetune_section(tmp_path):
    recipe = load_recipe(write(tmp_path, RECIPE))
    iterative = recipe.prune[1]
    ft = entry_finetune(recipe, iterative)
    assert ft.epochs == 2 and ft.lr == 0.01 and ft.distill.weight == 0.5
    assert ft.adversarial == recipe.finetune.adversarial
    assert entry_finetune(recipe, recipe.prune[0]) is recipe.finetune
    import tomllib

    assert parse_recipe(tomllib.loads(recipe.to_toml())) == recipe
    assert [j.reference for j in plan_jobs(recipe)][1:4] == ["fixed", "fixed", "fixed"]
