"""Bad inputs of the smaller public helpers: model registration, weights, MACs counting,
batching, pruning schedules, boolean flags and ``run_recipe``'s own arguments. Each is a
RobustPruneError naming the argument, never a raw error or a value silently accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import robustprune as rp
from robustprune.attacks import rebatch
from robustprune.data import create_datasets, create_loaders, split_validation
from robustprune.errors import InvalidArgumentError, RobustPruneError
from robustprune.evaluation import count_macs_params
from robustprune.models import create_model, load_weights, register_model
from robustprune.pruners import EpsilonPruner
from robustprune.pruners.schedules import schedule_targets
from robustprune.recipe import load_recipe, parse_recipe, run_recipe
from robustprune.recipe.parse import parse_override

XY = (torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))


def _builder(num_classes, input_shape, **kw):
    return create_model("fcn", num_classes=num_classes, input_shape=input_shape, width=8)


CASES = [
    ("register-name-int", lambda: register_model(_builder, name=3), r"name must be a non-empty string"),
    ("register-name-empty", lambda: register_model(_builder, name=""), r"name must be a non-empty string"),
    ("register-name-prefixed", lambda: register_model(_builder, name="timm:foo"), r"without ':'"),
    ("register-shape-negative", lambda: register_model(_builder, name="x-neg", input_shape=(1, -8, 8)), r"input_shape"),
    ("register-min-size-0", lambda: register_model(_builder, name="x-min", min_size=0), r"min_size must be an integer >= 1"),
    ("register-min-size-bool", lambda: register_model(_builder, name="x-bool", min_size=True), r"min_size"),
    ("register-not-callable", lambda: register_model(3), r"decorates a function"),
    ("lowrank-rank-above-width", lambda: create_model("lowrank-fcn", rank=1000), r"rank must be an integer in \[1, 256\]"),
    ("count-macs-not-a-model", lambda: count_macs_params("m", XY[0][:1]), r"needs a torch.nn.Module"),
    ("rebatch-size-0", lambda: rebatch(XY, 0, None), r"batch_size must be an integer >= 1"),
    ("rebatch-size-neg", lambda: rebatch(XY, -1, None), r"batch_size must be an integer >= 1"),
    ("rebatch-size-bool", lambda: rebatch(XY, True, None), r"batch_size must be an integer >= 1"),
    ("rebatch-size-float", lambda: rebatch(XY, 2.5, None), r"batch_size"),
    ("rebatch-n-0", lambda: rebatch(XY, 4, 0), r"n_examples must be an integer >= 1"),
    ("rebatch-n-str", lambda: rebatch(XY, 4, "3"), r"n_examples"),
    ("schedule-steps-0", lambda: schedule_targets(0.5, 0), r"steps must be an integer >= 1"),
    ("schedule-steps-float", lambda: schedule_targets(0.5, 2.5), r"steps must be an integer >= 1"),
    ("schedule-steps-bool", lambda: schedule_targets(0.5, True), r"steps must be an integer >= 1"),
    ("schedule-target-1.5", lambda: schedule_targets(1.5, 2), r"target_macs is the fraction"),
    ("schedule-target-nan", lambda: schedule_targets(float("nan"), 2), r"target_macs is the fraction"),
    ("pruner-progress-str", lambda: EpsilonPruner(eps=0.1, progress="yes"), r"progress must be True or False"),
    ("prune-progress-str", lambda: rp.prune(create_model("fcn", width=8), eps=0.3, progress="yes"),
     r"progress must be True or False"),
    ("parse-recipe-str", lambda: parse_recipe("x"), r"parse_recipe needs the recipe as a dict"),
    ("parse-recipe-overridden-int", lambda: parse_recipe({"name": "a"}, overridden=3), r"overridden must be a list"),
    ("load-recipe-int", lambda: load_recipe(3), r"load_recipe needs the path"),
    ("load-recipe-overrides-str", lambda: load_recipe("recipes/digits-tiny.toml", "train.epochs=2"),
     r"overrides must be a list"),
    ("parse-override-int", lambda: parse_override(3), r"an override is a 'key=value' string"),
    ("digits-test-fraction-tiny", lambda: create_loaders("digits", test_fraction=0.001), r"each of the 10 classes"),
    ("split-validation-nan", lambda: split_validation(create_datasets("digits"), float("nan")), r"validation is the fraction"),
    ("split-validation-str", lambda: split_validation(create_datasets("digits"), "0.1"), r"validation is the fraction"),
    ("split-validation-bool", lambda: split_validation(create_datasets("digits"), True), r"validation is the fraction"),
    ("split-validation-not-datasets", lambda: split_validation("x", 0.1), r"needs the Datasets"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_helpers_refuse_bad_input(call, match: str) -> None:
    with pytest.raises(RobustPruneError, match=match):
        call()


def test_the_mac_count_per_example_does_not_depend_on_the_batch() -> None:
    for model, shape in ((create_model("cnn-small", widths=(4, 8)), (1, 8, 8)), (create_model("fcn", width=8), (1, 8, 8))):
        counts = {count_macs_params(model, torch.rand(b, *shape)) for b in (1, 2, 64)}
        assert len(counts) == 1, counts


def _saved(tmp_path: Path, name: str, change) -> Path:
    state = {k: change(k, v.clone()) for k, v in create_model("fcn", width=8).state_dict().items()}
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda k, v: v.fill_(float("nan")) if v.is_floating_point() else v, r"NaN or infinite values"),
        (lambda k, v: torch.zeros_like(v) if k == "normalize.std" else v, r"normalization std <= 0"),
        (lambda k, v: v.long(), r"not floating point"),
    ],
    ids=["nan", "std-0", "int64"],
)
def test_load_weights_refuses_bad_values_and_copies_nothing(tmp_path: Path, change, match: str) -> None:
    model = create_model("fcn", width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(rp.RobustPruneError, match=match):
        load_weights(model, _saved(tmp_path, "w.pt", change))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_load_weights_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    path = _saved(tmp_path, "w.pt", lambda k, v: v)
    with pytest.raises(InvalidArgumentError, match="load_weights needs a torch.nn.Module"):
        load_weights("m", path)
    with pytest.raises(rp.RobustPruneError, match="meta device"):
        load_weights(create_model("fcn", width=8).to("meta"), path)


RECIPE = {
    "name": "flags", "seeds": [0], "data": {"name": "digits"}, "model": {"name": "fcn", "width": 4},
    "train": {"epochs": 1}, "eval": {"attacks": ["apgd-ce"], "n_iter": 2, "n_examples": 8, "latency": False},
}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"progress": "yes"}, r"progress must be True or False"),
        ({"resume": "yes"}, r"resume must be True or False"),
        ({"run_dir": 3}, r"run_dir must be a folder path"),
    ],
)
def test_run_recipe_checks_its_own_arguments_before_running(tmp_path: Path, kwargs, match: str) -> None:
    recipe = parse_recipe({**RECIPE, "output": str(tmp_path / "runs")})
    with pytest.raises(InvalidArgumentError, match=match):
        run_recipe(recipe, **kwargs)
    assert not (tmp_path / "runs").exists()


def test_a_scheduler_that_refuses_its_settings_is_one_clear_error() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from robustprune.train import fit

    loader = DataLoader(TensorDataset(*XY), batch_size=4)
    with pytest.raises(InvalidArgumentError, match=r"The 'wsd' scheduler refuses these settings"):
        fit(create_model("fcn", width=8), (loader, None), 1, scheduler="wsd", progress=False)


def test_run_recipe_refuses_a_dict() -> None:
    with pytest.raises(InvalidArgumentError, match="run_recipe needs a Recipe"):
        run_recipe(RECIPE)
