"""The APB protocol: several attack budgets in one evaluation (``[eval] extra_eps``), the
recipe ``recipes/cifar10-resnet18-apb.toml`` and the comparison table
``benchmarks/apb_table.py``."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from robustprune.attacks import robust_accuracy
from robustprune.checkpoint import load_pruned
from robustprune.data import create_datasets
from robustprune.errors import RecipeError
from robustprune.recipe import load_recipe, plan_jobs, run_recipe
from robustprune.recipe.sections import EvalConfig, budget_key

ROOT = Path(__file__).resolve().parents[1]
APB_RECIPE = ROOT / "recipes" / "cifar10-resnet18-apb.toml"

BUDGETS = """
name = "budgets"
[data]
name = "digits"
[model]
name = "cnn-small"
widths = [4, 8]
[train]
epochs = 1
[[prune]]
method = "fixed"
ratio = [0.5]
[eval]
eps = 0.1
extra_eps = ["8/255", 0.2]
n_examples = 16
n_iter = 3
latency = false
"""

#: the smoke run of the test: tiny everything, one attack, every entry of the recipe
SMOKE = [
    "data.name=synthetic", "data.n_train=32", "data.n_test=8", "data.num_workers=0", "seeds=[0]",
    "model.width=8", "train.epochs=1", "finetune.epochs=1", "train.adversarial.steps=1",
    "finetune.adversarial.steps=1", "eval.n_examples=8", "eval.n_iter=2", 'eval.attacks=["apgd-ce"]',
    "eval.latency=false",
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _apb_table():
    spec = importlib.util.spec_from_file_location("_bench_apb_table", ROOT / "benchmarks" / "apb_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------- several budgets


@pytest.fixture(scope="module")
def budgets_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budgets")
    return run_recipe(load_recipe(_write(tmp, BUDGETS)), run_dir=tmp / "run", progress=False)


def test_budget_keys_are_stable_six_digit_strings():
    assert budget_key(8 / 255) == "0.0313725" == budget_key(float("8") / 255)
    assert budget_key(0.031) == "0.031" and budget_key(0.3) == "0.3" and budget_key(1) == "1"
    assert EvalConfig(eps=0.031, extra_eps=(8 / 255,)).budgets == (0.031, 8 / 255)
    assert EvalConfig().budgets == () and EvalConfig(eps=0.1).extra_eps == ()


def test_every_budget_is_attacked_on_the_same_examples_and_recorded_in_robust_at(budgets_run):
    for row in budgets_run.rows:
        at = row["robust_at"]
        assert list(at) == ["0.1", "0.0313725", "0.2"]
        assert at["0.1"] == row["robust_accuracy"]  # the main budget is the robust_accuracy column
        for key in ("0.0313725", "0.2"):
            extra = row["robust_extra"][key]
            assert extra["n"] == row["eval_settings"]["n"] == 16
            assert extra["clean_accuracy"] == row["robust_clean_accuracy"]  # the same 16 examples
            assert extra["attacks"] == ["apgd-ce", "apgd-t"] and extra["n_iter"] == 3
            assert 0 <= at[key] <= row["robust_clean_accuracy"]
        assert row["eval_settings"]["extra_eps"] == [8 / 255, 0.2]


def test_an_extra_budget_equals_a_direct_attack_of_the_saved_model(budgets_run):
    row = budgets_run.rows[1]
    model = load_pruned(row["checkpoint"])
    test = DataLoader(create_datasets("digits", seed=0).test, batch_size=64, shuffle=False)
    direct = robust_accuracy(model, test, eps=0.2, n_examples=16, n_iter=3, seed=0, device="cpu", progress=False)
    assert direct.robust_accuracy == row["robust_at"]["0.2"]


def test_a_recipe_without_extra_eps_keeps_its_columns_and_writes_no_extra_key(tmp_path):
    recipe = load_recipe(_write(tmp_path, BUDGETS), ["eval.extra_eps=[]"])
    assert recipe.eval.extra_eps == () and "extra_eps" not in recipe.to_dict()["eval"]


@pytest.mark.parametrize(
    "value, match",
    [
        ("[0]", "eval.extra_eps = \\[0\\] is invalid"),
        ("[1.5]", "eval.extra_eps"),
        ("[0.1]", "differ from eps = 0.1"),
        ('["8/255", 0.0313725490196]', "distinct"),
        ('["x"]', "eval.extra_eps"),
    ],
)
def test_bad_extra_budgets_are_refused_naming_the_key(tmp_path, value, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(_write(tmp_path, BUDGETS), [f"eval.extra_eps={value}"])


def test_extra_budgets_need_the_main_budget(tmp_path):
    text = BUDGETS.replace("eps = 0.1\n", "")
    with pytest.raises(RecipeError, match="eval.extra_eps.*needs the main budget eps"):
        load_recipe(_write(tmp_path, text))


# ---------------------------------------------------------------------- the APB recipe


def test_the_apb_recipe_follows_the_protocol():
    r = load_recipe(APB_RECIPE)
    adv = r.train.adversarial
    assert (adv.kind, adv.norm, adv.steps, adv.beta) == ("trades", "Linf", 10, 6.0)
    assert adv.eps == pytest.approx(8 / 255) and adv.step_size == pytest.approx(2 / 255)
    assert r.train.epochs == 100 and r.finetune.adversarial == adv
    assert r.model.name == "resnet18-cifar" and r.data.name == "cifar10"
    assert r.eval.attacks == ("standard",) and r.eval.eps == 0.031 and r.eval.n_examples is None
    assert r.eval.extra_eps == pytest.approx((8 / 255,))
    entries = {e.label: e for e in r.prune}
    assert list(entries) == ["fixed", "epsilon", "global", "sensitivity", "twinrep-style", "pwoa-style", "scratch"]
    assert entries["sensitivity"].match == "fixed"
    assert entries["fixed"].ratio == (0.5, 0.75, 0.9)
    for label, entry in entries.items():
        if label != "fixed":
            assert entry.match == "fixed"
        if label != "scratch":
            assert entry.round_to == 8
    assert entries["twinrep-style"].kind == "during-training"
    assert entries["pwoa-style"].finetune["distill"]["weight"] == 1.0
    jobs = plan_jobs(r)
    assert len(jobs) == len(r.seeds) * (1 + 3 * len(entries))
    assert {j.reference for j in jobs if j.label != "dense"} <= {"fixed", None}


def test_the_smoke_command_in_the_recipe_header_is_valid():
    header = "".join(line[1:].rstrip("\\\n") + " " for line in APB_RECIPE.read_text().splitlines()
                     if line.startswith("#"))
    command = header.split("Smoke run", 1)[1].split("robustprune run", 1)[1]
    sets = re.findall(r"--set (\S+)", " ".join(shlex.split(command)))
    assert "data.name=synthetic" in sets and 'eval.attacks=["apgd-ce"]' in sets
    r = load_recipe(APB_RECIPE, sets)
    assert r.data.name == "synthetic" and r.eval.n_examples == 16


def test_the_apb_reference_numbers_include_those_the_issue_quotes():
    table = _apb_table().APB_RESNET18_CIFAR10_STRUCTURED
    assert table["TwinRep"][50] == (79.90, 45.58) and table["TwinRep"][90] == (78.41, 44.30)
    assert table["PwoA"][50][0] == 83.44
    assert all(set(v) == {50, 75, 90} for v in table.values())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apb")
    return run_recipe(load_recipe(APB_RECIPE, SMOKE), run_dir=tmp / "run", progress=False)


def test_a_smoke_run_of_the_apb_recipe_records_both_budgets(smoke_run):
    rows = smoke_run.rows
    assert len(rows) == 1 + 3 * 7  # dense, then 3 sparsities x 7 entries
    for row in rows:
        assert set(row["robust_at"]) == {"0.031", "0.0313725"}
        assert row["robust_at"]["0.031"] == row["robust_accuracy"]
    twin = next(r for r in rows if r["label"] == "twinrep-style")
    assert twin["schedule"]["kind"] == "during-training" and twin["finetune"]["epochs"] == 0
    pwoa = next(r for r in rows if r["label"] == "pwoa-style")
    assert pwoa["finetune"]["distill"]["weight"] == 1.0


def test_the_apb_table_renders_a_run_next_to_the_apb_rows(smoke_run, tmp_path):
    table = _apb_table()
    out = tmp_path / "apb.md"
    assert table.main([str(smoke_run.run_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "**Not comparable with APB**" in text and "attacks ['apgd-ce']" in text
    lines = text.splitlines()
    for sparsity in (50, 75, 90):
        block = [ln for ln in lines if ln.startswith(f"| {sparsity}% |")]
        assert block[0].startswith(f"| {sparsity}% | fixed | this run |")
        assert any("| epsilon (equal MACs) | this run |" in ln for ln in block)
        assert any("| twinrep-style | this run |" in ln for ln in block)
        assert block[-1].startswith(f"| {sparsity}% | TwinRep | APB |")
    assert "| 90% | TwinRep | APB | 78.41 | 44.30 | – |" in text
    assert sum(ln.startswith("| 0% | dense | this run |") for ln in lines) == 1
    ours = [r for r in table.aggregate(smoke_run.rows) if r["source"] == "this run"]
    assert all(r["robust"][0] is not None and r["robust"][1] is not None for r in ours)
