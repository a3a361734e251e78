"""Recipes: validation, overrides, the resolved config, the runner and its outputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from robustprune.errors import RecipeError
from robustprune.recipe import (
    Recipe,
    apply_override,
    describe_plan,
    load_recipe,
    parse_override,
    parse_recipe,
    plan_jobs,
    to_toml,
    variants,
)

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))

MINIMAL = """
name = "mini"
[data]
name = "digits"
[model]
name = "cnn-small"
widths = [4, 8]
[train]
epochs = 1
[[prune]]
method = "epsilon"
eps = [0.1, 0.2]
[[prune]]
method = "fixed"
match = "epsilon"
[eval]
eps = 0.1
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- shipped recipes


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate_and_round_trip_through_config_toml(path: Path) -> None:
    recipe = load_recipe(path)
    again = parse_recipe(tomllib.loads(recipe.to_toml()))
    assert again == recipe
    assert plan_jobs(recipe)


def test_main_recipe_compares_the_recommended_pipeline_with_the_previous_default_early_and_scratch() -> None:
    """The demo job puts the recommended pipeline (finetune at the dense lr) next to the
    previous default, pruning during training and scratch, paired at 25% and 10% MACs."""
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "digits-cnn.toml")
    by = {p.label: p for p in recipe.prune}
    assert {"previous-default", "recommended", "early", "scratch"} <= set(by)
    assert recipe.train is not None and recipe.train.adversarial is not None
    assert recipe.finetune.adversarial is not None
    assert recipe.finetune.lr == recipe.train.lr  # the recommendation: rewind the lr
    assert entry_lr(recipe, by["previous-default"]) < recipe.train.lr
    assert recipe.compare.reference == "previous-default" and recipe.compare.scratch == "scratch"
    assert by["scratch"].method == "scratch" and by["scratch"].match == "recommended"
    assert by["early"].schedule is not None and by["early"].schedule.kind == "during-training"
    assert set(recipe.eval.attacks) == {"apgd-ce", "apgd-t"}
    assert len(recipe.seeds) >= 2


def entry_lr(recipe, entry) -> float:
    from robustprune.recipe.parse import entry_finetune

    return entry_finetune(recipe, entry).lr


# --------------------------------------------------------------------------- validation


BAD_KEYS = [
    # (override that introduces the unknown key, the key, an allowed key the message lists)
    ("trian.epochs=3", "trian", "train"),
    ("train.epoch=3", "train.epoch", "epochs"),
    ("finetune.lrr=0.1", "finetune.lrr", "lr"),
    ("eval.n_example=10", "eval.n_example", "n_examples"),
    ("data.sizee=16", "data.sizee", "size"),
    ("analysis.model=\"all\"", "analysis.model", "models"),
    ("prune.0.epss=[0.1]", "prune[0].epss", "eps"),
    ("train.adversarial={eps=0.1,stpes=3}", "train.adversarial.stpes", "steps"),
    ("train.regularizers=[{kind=\"beta\",weight=1.0,tpo=0.1}]", "train.regularizers[0].tpo", "top"),
    ("checkpoint={path=\"x.pt\",paht=\"y\"}", "checkpoint.paht", "path"),
]


@pytest.mark.parametrize("override,key,allowed", BAD_KEYS, ids=[k for _, k, _ in BAD_KEYS])
def test_unknown_key_error_names_the_key_the_file_and_the_allowed_keys(
    tmp_path: Path, override: str, key: str, allowed: str
) -> None:
    path = write(tmp_path, MINIMAL)
    if override.startswith("checkpoint"):
        text = MINIMAL.replace("[model]\nname = \"cnn-small\"\nwidths = [4, 8]\n", "").replace("[train]\nepochs = 1\n", "")
        path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [override])
    msg = str(info.value)
    assert f"'{key}'" in msg
    assert str(path) in msg
    assert "Allowed keys" in msg and allowed in msg


BAD_VALUES = [
    # (override, key named in the message, text the message must contain)
    ("train.epochs=-1", "train.epochs", "integer >= 0"),  # 0 needs model.weights (preflight)
    ("train.epochs=1.5", "train.epochs", "integer"),
    ("train.lr=-1", "train.lr", "> 0"),
    ("train.optimizer=sgdd", "train.optimizer", "'sgd'"),
    ("train.scheduler=cosin", "train.scheduler", "'cosine'"),
    ("train.amp=maybe", "train.amp", "'bf16'"),
    ("train.adversarial={eps=2.0}", "train.adversarial.eps", "in [0, 1]"),
    ("train.adversarial={eps=0.1,kind=\"pdg\"}", "train.adversarial.kind", "'pgd'"),
    ("train.adversarial={eps=0.1,norm=\"L1\"}", "train.adversarial.norm", "'Linf'"),
    ("train.regularizers=[{kind=\"betta\",weight=1.0}]", "train.regularizers[0].kind", "'beta'"),
    ("train.regularizers=[{kind=\"beta\",weight=-1.0}]", "train.regularizers[0].weight", ">= 0"),
    ("eval.norm=L3", "eval.norm", "'Linf', 'L2'"),
    ("eval.eps=0", "eval.eps", "> 0"),
    ("eval.eps=\"8/0\"", "eval.eps", "a number"),
    ("eval.attacks=[\"apgd-ce\",\"pgd\"]", "eval.attacks", "'apgd-t'"),
    ("eval.attacks=[\"standard\",\"apgd-ce\"]", "eval.attacks", "standard"),
    ("eval.n_examples=0", "eval.n_examples", ">= 1"),
    ("eval.latency=1", "eval.latency", "true or false"),
    ("data.name=cifar", "data.name", "'cifar10'"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("model.name=42", "model.name", "string"),
    ("seeds=[0,0]", "seeds", "distinct"),
    ("seeds=[-1]", "seeds", ">= 0"),
    ("prune.0.method=magnitude", "prune[0].method", "'epsilon'"),
    ("prune.0.eps=[0.0]", "prune[0].eps", "> 0"),
    ("prune.0.eps=[1.0]", "prune[0].eps", "< 1"),
    ("prune.0.eps=[0.1,0.1]", "prune[0].eps", "distinct"),
    ("prune.fixed.match=nothing", "prune[1].match", "'epsilon'"),
    ("analysis.models=some", "analysis.models", "'dense'"),
    ("name=\"a b\"", "name", "letters"),
]


@pytest.mark.parametrize("override,key,text", BAD_VALUES, ids=[o for o, _, _ in BAD_VALUES])
def test_bad_value_error_names_the_key_the_file_and_what_is_allowed(
    tmp_path: Path, override: str, key: str, text: str
) -> None:
    path = write(tmp_path, MINIMAL)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [override])
    msg = str(info.value)
    assert re.search(rf"(^|\s){re.escape(key)} = ", msg), msg
    assert str(path) in msg and "--set" in msg
    assert text in msg


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda t: t.replace("[train]\nepochs = 1\n", ""), "[train]"),
        (lambda t: t + "[checkpoint]\npath = \"x.pt\"\n", "not both"),
        (lambda t: t.replace("[data]\nname = \"digits\"\n", ""), "[data]"),
        (lambda t: t.replace("match = \"epsilon\"", "ratio = [0.5]\nmatch = \"epsilon\""), "exactly one"),
        (lambda t: t.replace("method = \"fixed\"", "method = \"spectral\"").replace(
            "match = \"epsilon\"", "ratio = [0.5]"), "does not take 'ratio'"),
        (lambda t: t + "[[prune]]\nmethod = \"epsilon\"\neps = [0.3]\n", "distinct label"),
        (lambda t: t.replace("eps = [0.1, 0.2]", "eps = [0.1, 0.2]\nlabel = \"dense\""), "'dense'"),
        (lambda t: t.replace("[eval]", "[evaluation]"), "unknown key 'evaluation'"),
        (lambda t: t + "[sweep]\n\"train.regularizers.0.weight\" = [0.1]\n", "out of range"),
        (lambda t: t.replace("epochs = 1", "epochs = [1"), "not valid TOML"),
    ],
    ids=["no-train", "train-and-checkpoint", "no-data", "two-settings", "method-setting",
         "duplicate-label", "label-dense", "unknown-section", "bad-sweep", "bad-toml"],
)
def test_structural_mistakes_are_reported_with_the_file(tmp_path: Path, edit, needle: str) -> None:
    path = write(tmp_path, edit(MINIMAL))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_missing_recipe_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- overrides


def test_set_parses_toml_literals_and_bare_strings() -> None:
    assert parse_override("prune.eps=[0.02,0.05]") == ("prune.eps", [0.02, 0.05])
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("eval.latency=false") == ("eval.latency", False)
    assert parse_override("data.name=synthetic") == ("data.name", "synthetic")
    assert parse_override('data.name="digits"') == ("data.name", "digits")
    assert parse_override("data.shape=[3, 8, 8]") == ("data.shape", [3, 8, 8])
    for bad in ("train.epochs", "=3", "prune.eps=[0.1,", "a..b=1"):
        with pytest.raises(RecipeError):
            parse_override(bad)


def test_set_prune_eps_changes_every_entry_with_eps_and_nothing_else(tmp_path: Path) -> None:
    text = MINIMAL + '[[prune]]\nmethod = "epsilon"\nlabel = "eb"\neps = [0.3]\n'
    recipe = load_recipe(write(tmp_path, text), ["prune.eps=[0.02,0.05]"])
    by_label = {p.label: p for p in recipe.prune}
    assert by_label["epsilon"].eps == (0.02, 0.05)
    assert by_label["eb"].eps == (0.02, 0.05)
    assert by_label["fixed"].eps == () and by_label["fixed"].match == "epsilon"


def test_set_addresses_prune_entries_by_index_and_label(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    recipe = load_recipe(path, ["prune.0.eps=[0.3]", "prune.fixed.round_to=4"])
    assert recipe.prune[0].eps == (0.3,)
    assert recipe.prune[1].round_to == 4 and recipe.prune[0].round_to is None
    recipe = load_recipe(path, ["prune.round_to=2"])  # no entry has it: every entry gets it
    assert all(p.round_to == 2 for p in recipe.prune)
    with pytest.raises(RecipeError, match="out of range"):
        load_recipe(path, ["prune.5.eps=[0.1]"])


def test_set_creates_missing_sections_and_nested_tables(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, MINIMAL),
        ["finetune.epochs=2", "finetune.adversarial.eps=0.1", "analysis.models=all", "seeds=[3,4]"],
    )
    assert recipe.finetune.epochs == 2 and recipe.finetune.adversarial.eps == 0.1
    assert recipe.analysis.models == "all" and recipe.seeds == (3, 4)


def test_apply_override_refuses_to_descend_into_a_value() -> None:
    raw = {"train": {"epochs": 1}}
    with pytest.raises(RecipeError, match="not a table"):
        apply_override(raw, "train.epochs.x", 2)


# --------------------------------------------------------------------------- resolved config


def test_resolved_config_fills_defaults_and_reloads_equal(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL), ["eval.eps=\"8/255\""])
    raw = tomllib.loads(recipe.to_toml())
    assert raw["finetune"]["epochs"] == 0 and raw["train"]["optimizer"] == "sgd"
    assert math.isclose(raw["eval"]["eps"], 8 / 255)
    assert raw["prune"][1] == {"method": "fixed", "label": "fixed", "match": "epsilon"}
    again = write(tmp_path, recipe.to_toml(), "config.toml")
    assert load_recipe(again) == recipe


_keys = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_toml_writer_round_trips_plain_data(data: dict) -> None:
    assert tomllib.loads(to_toml(data)) == data


def test_toml_writer_skips_none_and_rejects_unknown_types() -> None:
    assert tomllib.loads(to_toml({"a": None, "b": {"c": None, "d": 1}})) == {"b": {"d": 1}}
    with pytest.raises(TypeError):
        to_toml({"a": object()})


# --------------------------------------------------------------------------- plan and sweep


def test_plan_trains_once_per_seed_and_matches_every_epsilon_model(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL), ["seeds=[0,1]"])
    jobs = plan_jobs(recipe)
    assert [j.id for j in jobs if j.label == "dense"] == ["seed0/dense", "seed1/dense"]
    matched = [j for j in jobs if j.match]
    assert {j.match for j in matched} == {j.id for j in jobs if j.label == "epsilon"}
    assert all(jobs.index(j) > [x.id for x in jobs].index(j.match) for j in matched)
    assert len({j.id for j in jobs}) == len(jobs) == 2 * (1 + 2 + 2)
    assert "seed1/fixed/match=epsilon:eps=0.2" in describe_plan(recipe)


def test_sweep_makes_one_variant_per_value_with_its_own_dense_models(tmp_path: Path) -> None:
    text = MINIMAL.replace("[train]\nepochs = 1", "[train]\nepochs = 1\nregularizers = [{ kind = \"nuclear\", weight = 0.0 }]")
    text += '[sweep]\n"train.regularizers.0.weight" = { label = "lambda", values = [0.0, 0.01] }\n'
    recipe = load_recipe(write(tmp_path, text))
    found = variants(recipe)
    assert [name for name, _ in found] == ["lambda=0", "lambda=0.01"]
    assert [v.train.regularizers[0].weight for _, v in found] == [0.0, 0.01]
    dense = [j.id for j in plan_jobs(recipe) if j.label == "dense"]
    assert dense == ["v0/seed0/dense", "v1/seed0/dense"]
    assert isinstance(found[0][1], Recipe)


def test_sweep_values_are_validated_when_loading(tmp_path: Path) -> None:
    text = MINIMAL + '[sweep]\n"train.epochs" = [1, -2]\n'
    with pytest.raises(RecipeError, match="train.epochs"):
        load_recipe(write(tmp_path, text))


# --------------------------------------------------------------------------- report rendering


def _row(seed: int, label: str, setting: str, order: int, macs_kept: float, clean: float, robust: float | None) -> dict:
    return {
        "id": f"seed{seed}/{label}/{setting}", "variant": "", "seed": seed, "order": order,
        "label": label, "method": label, "setting": setting, "macs": int(1000 * macs_kept),
        "params": int(500 * macs_kept), "macs_kept": macs_kept, "params_kept": macs_kept,
        "clean_accuracy": clean, "robust_accuracy": robust,
    }


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    from robustprune.report import summarize, summary_markdown

    rows = [
        _row(0, "dense", "–", 0, 1.0, 0.90, 0.50),
        _row(1, "dense", "–", 0, 1.0, 0.94, 0.56),
        _row(0, "epsilon", "ε=0.1", 1, 0.6, 0.80, 0.40),
        _row(1, "epsilon", "ε=0.1", 1, 0.5, 0.84, 0.44),
    ]
    summary = summarize(rows)
    assert [(s.label, s.seeds) for s in summary] == [("dense", (0, 1)), ("epsilon", (0, 1))]
    eps = summary[1]
    assert eps.clean.mean == pytest.approx(0.82) and eps.clean.std == pytest.approx(math.sqrt(0.0008))
    assert eps.macs_kept.mean == pytest.approx(0.55)
    assert eps.robust_over_clean.mean == pytest.approx((0.40 / 0.80 + 0.44 / 0.84) / 2)
    table = summary_markdown(rows)
    assert "| epsilon | ε=0.1 | 55.0 ± 7.1% |" in table
    assert "82.0 ± 2.8 | 42.0 ± 2.8 |" in table


def test_summary_without_robust_accuracy_has_no_robust_columns() -> None:
    from robustprune.report import summary_markdown

    table = summary_markdown([_row(0, "dense", "–", 0, 1.0, 0.9, None)])
    assert "robust" not in table and "| dense | – | 100.0% |" in table


def test_read_results_skips_a_cut_last_line_only(tmp_path: Path) -> None:
    from robustprune.report import read_results

    good = json.dumps(_row(0, "dense", "–", 0, 1.0, 0.9, 0.5))
    (tmp_path / "results.jsonl").write_text(good + "\n" + good[:20], encoding="utf-8")
    assert len(read_results(tmp_path)) == 1
    (tmp_path / "results.jsonl").write_text(good[:20] + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="line 1"):
        read_results(tmp_path)


def test_pareto_plot_is_a_png(tmp_path: Path) -> None:
    from robustprune.report import plot_pareto

    rows = [_row(s, "dense", "–", 0, 1.0, 0.9, 0.5) for s in (0, 1)]
    rows += [_row(s, "fixed", "ratio=0.5", 1, 0.5, 0.8, 0.4) for s in (0, 1)]
    out = plot_pareto(rows, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- the runner, end to end

TINY = Path(__file__).parent.parent / "recipes" / "digits-tiny.toml"
# one seed and a two-epoch finetune (so that a run can be killed inside it)
TINY_SET = ["seeds=[0]", "finetune.epochs=2"]
VOLATILE = {"seconds", "timing_s", "latency_ms", "checkpoint"}


def _stable(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in VOLATILE}
    out["eval"] = {k: v for k, v in row["eval"].items() if k != "latency_ms"}
    if row.get("prune"):
        out["prune"] = {k: v for k, v in row["prune"].items() if k != "seconds"}
    if row.get("fit"):
        out["fit"] = {
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in row["fit"]["history"]],
            "final_test_accuracy": row["fit"]["final_test_accuracy"],
        }
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    from robustprune.recipe import run_recipe

    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(TINY, [*TINY_SET, f"output={json.dumps(str(out))}"])
    return recipe, run_recipe(recipe, progress=False)


def test_tiny_recipe_writes_every_output_with_consistent_numbers(tiny_run) -> None:
    from robustprune.checkpoint import load_pruned

    recipe, result = tiny_run
    d = result.run_dir
    assert d.parent == Path(recipe.output) / recipe.name
    assert load_recipe(d / "config.toml") == recipe
    rows = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [j.id for j in plan_jobs(recipe)] == [r["id"] for r in result.rows]
    summary = (d / "summary.md").read_text()
    assert summary == result.summary
    assert (d / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        assert 0 <= r["robust_accuracy"] <= r["robust_clean_accuracy"] <= 1
        assert r["robust_clean_accuracy"] == r["eval"]["robust"]["clean_accuracy"]
        assert r["robust_over_clean"] == pytest.approx(r["robust_accuracy"] / r["robust_clean_accuracy"])
        assert r["eval_settings"]["attacks"] == ["apgd-ce", "apgd-t"]
        model = load_pruned(r["checkpoint"])
        assert sum(p.numel() for p in model.parameters()) == r["params"]
        if r["label"] == "dense":
            assert r["macs_kept"] == 1.0 and r["prune"] is None
            continue
        assert r["macs_kept"] < 1.0 and r["macs_kept"] == pytest.approx(r["pruned_macs_kept"], rel=1e-6)
        assert f"| {r['label']} | {r['setting']} | {r['macs_kept']:.1%} |" in summary
        if r.get("matched_to"):
            target = by_id[r["matched_to"]]["macs_kept"]
            assert r["target_macs"] == pytest.approx(target)
            assert abs(r["macs_kept"] - target) <= 0.01 * target  # matched within 1%
    assert {r["label"] for r in rows} == {"dense", "epsilon", "epsilon+beta", "fixed", "global"}


def test_resume_after_a_kill_inside_finetuning_gives_the_same_results(tiny_run, tmp_path: Path, monkeypatch) -> None:
    from robustprune import train
    from robustprune.recipe import run_recipe

    recipe, reference = tiny_run
    recipe = load_recipe(TINY, [*TINY_SET, f"output={json.dumps(str(tmp_path))}"])
    real_fit = train.fit
    calls = {"finetune": 0}

    def killing_fit(*args, **kwargs):
        if ".finetune" in str(kwargs.get("checkpoint_dir")):
            calls["finetune"] += 1
            if calls["finetune"] == 2:  # the second pruned model dies after its first epoch

                def die(stats):
                    raise KeyboardInterrupt

                kwargs["on_epoch_end"] = die
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", killing_fit)
    run_dir = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, run_dir=run_dir, progress=False)
    done = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(done) == 2  # dense and the first pruned model
    assert list(run_dir.glob("checkpoints/**/*.finetune/last.pt"))  # unfinished training left behind
    with open(run_dir / "results.jsonl", "a") as fh:  # and a row cut short by the kill
        fh.write(done[-1][: len(done[-1]) // 2])
    monkeypatch.setattr(train, "fit", real_fit)

    resumed = run_recipe(recipe, run_dir=run_dir, resume=True, progress=False)
    assert [_stable(r) for r in resumed.rows] == [_stable(r) for r in reference.rows]
    resumed_row = resumed.rows[2]
    assert resumed_row["fit"]["resumed_from_epoch"] == 1
    assert not list(run_dir.glob("checkpoints/**/*.finetune"))  # cleaned up once finished


def test_resume_refuses_a_changed_recipe(tiny_run) -> None:
    from robustprune.recipe import run_recipe

    recipe, result = tiny_run
    changed = load_recipe(TINY, [*TINY_SET, f"output={json.dumps(recipe.output)}", "eval.n_iter=3"])
    with pytest.raises(RecipeError, match="eval.n_iter"):
        run_recipe(changed, run_dir=result.run_dir, resume=True, progress=False)


def test_resume_accepts_a_config_written_before_keys_were_added(tiny_run, tmp_path: Path) -> None:
    """A run started by an older version has no line for a key added since (here the
    [eval] speed flags): it resumes as long as the recipe keeps that key's default."""
    import shutil

    from robustprune.recipe import run_recipe

    recipe, result = tiny_run
    old = tmp_path / "old-run"
    shutil.copytree(result.run_dir, old)
    config = old / "config.toml"
    lines = config.read_text(encoding="utf-8").splitlines(keepends=True)
    section, kept = None, []
    for line in lines:
        section = line.strip() if line.startswith("[") else section
        if section == "[eval]" and line.split("=")[0].strip() in ("channels_last", "compile", "cuda_graphs"):
            continue
        kept.append(line)
    assert len(kept) == len(lines) - 3
    config.write_text("".join(kept), encoding="utf-8")
    again = run_recipe(recipe, run_dir=old, resume=True, progress=False)
    assert [r["id"] for r in again.rows] == [r["id"] for r in result.rows]
    changed = load_recipe(TINY, [*TINY_SET, f"output={json.dumps(recipe.output)}", "eval.channels_last=true"])
    with pytest.raises(RecipeError, match="eval.channels_last"):
        run_recipe(changed, run_dir=old, resume=True, progress=False)


def test_resume_without_a_run_dir_continues_the_latest_run(tiny_run) -> None:
    from robustprune.recipe import run_recipe

    recipe, result = tiny_run
    again = run_recipe(recipe, resume=True, progress=False)
    assert again.run_dir == result.run_dir
    assert again.rows == result.rows  # everything was finished: nothing ran again


def test_checkpoint_recipe_starts_from_a_trained_model(tiny_run, tmp_path: Path) -> None:
    from robustprune.recipe import run_recipe

    _, result = tiny_run
    dense = next(r for r in result.rows if r["label"] == "dense")
    text = f"""
name = "from-checkpoint"
output = {json.dumps(str(tmp_path))}
[checkpoint]
path = {json.dumps(dense["checkpoint"])}
[data]
name = "digits"
[[prune]]
method = "epsilon"
eps = [0.5]
[eval]
eps = 0.1
n_examples = 16
n_iter = 2
latency = false
"""
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.train is None and recipe.model is None
    rows = run_recipe(recipe, progress=False).rows
    assert [r["label"] for r in rows] == ["dense", "epsilon"]
    assert rows[0]["clean_accuracy"] == dense["clean_accuracy"]  # the very same model
    assert rows[0]["checkpoint"] == dense["checkpoint"]
    assert rows[1]["fit"] is None and rows[1]["macs_kept"] < 1
    with pytest.raises(RecipeError, match="holds a model for inputs"):
        run_recipe(load_recipe(write(tmp_path, text), ["data.size=16"]), progress=False)


def test_unknown_model_option_fails_before_anything_is_written(tmp_path: Path) -> None:
    from robustprune.recipe import run_recipe

    recipe = load_recipe(write(tmp_path, MINIMAL), ["model.widht=8", f"output={json.dumps(str(tmp_path / 'o'))}"])
    with pytest.raises(RecipeError, match=r"model\.widht"):
        run_recipe(recipe, progress=False)
    assert not (tmp_path / "o").exists()

