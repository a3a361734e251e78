"""Recipes read the library's registries and configs: every scheduler, pruning method,
attack, norm, adversarial kind and regularizer the library has is accepted, and nothing
else; [train]/[finetune] are FitConfigs and adversarial tables AdversarialConfigs."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustprune.attacks import (
    ADVERSARIAL_KINDS,
    ATTACKS,
    AUTOATTACK_ATTACKS,
    NORMS,
    AdversarialConfig,
)
from robustprune.cli import build_parser
from robustprune.errors import InvalidArgumentError, RecipeError
from robustprune.pruners import PRUNERS
from robustprune.recipe import FitConfig, RegularizerSpec, load_recipe
from robustprune.recipe.checks import method_options, method_settings, regularizer_options
from robustprune.regularizers import REGULARIZERS
from robustprune.train import SCHEDULERS

MINIMAL = """
name = "mini"
[data]
name = "digits"
[model]
name = "cnn-small"
[train]
epochs = 1
[[prune]]
method = "epsilon"
eps = [0.1]
"""


@pytest.fixture()
def minimal(tmp_path: Path) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    return path


@pytest.mark.parametrize("scheduler", [*SCHEDULERS, "none"])
def test_recipe_accepts_every_scheduler_fit_accepts(minimal: Path, scheduler: str) -> None:
    recipe = load_recipe(minimal, [f"train.scheduler={scheduler}", f"finetune.scheduler={scheduler}"])
    assert recipe.train.scheduler == recipe.finetune.scheduler == scheduler


def test_train_and_finetune_are_fit_configs_and_adversarial_an_adversarial_config(minimal: Path) -> None:
    recipe = load_recipe(minimal, ["train.adversarial={eps=0.1,kind=\"trades\"}", "finetune.epochs=2"])
    assert isinstance(recipe.train, FitConfig) and isinstance(recipe.finetune, FitConfig)
    assert recipe.train.adversarial == AdversarialConfig(kind="trades", eps=0.1)
    assert recipe.finetune.epochs == 2 and recipe.finetune.lr == 0.01  # the finetune defaults
    assert load_recipe(minimal, ["train.adversarial=false"]).train.adversarial is None


@pytest.mark.parametrize("kind", ADVERSARIAL_KINDS)
@pytest.mark.parametrize("norm", NORMS)
def test_every_adversarial_kind_and_norm_is_accepted(minimal: Path, kind: str, norm: str) -> None:
    recipe = load_recipe(minimal, [f'train.adversarial={{eps=0.1,kind="{kind}",norm="{norm}"}}'])
    assert (recipe.train.adversarial.kind, recipe.train.adversarial.norm) == (kind, norm)


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_is_an_eval_norm(minimal: Path, norm: str) -> None:
    assert load_recipe(minimal, [f"eval.norm={norm}", "eval.eps=0.1"]).eval.norm == norm


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_is_an_eval_attack(minimal: Path, attack: str) -> None:
    assert load_recipe(minimal, [f'eval.attacks=["{attack}"]']).eval.attacks == (attack,)
    assert set(AUTOATTACK_ATTACKS) < set(ATTACKS)


@pytest.mark.parametrize("method", list(PRUNERS))
def test_every_pruning_method_takes_the_settings_of_its_pruner(minimal: Path, method: str) -> None:
    settings = method_settings(method)
    assert "target_macs" in settings and "match" in settings
    assert ("eps" in settings) != ("ratio" in settings)
    key = "eps" if "eps" in settings else "ratio"
    # a method that measures with an attack (sensitivity) needs an adversarial config
    attack = ['train.adversarial={kind="pgd",eps=0.1,steps=1}'] if method == "sensitivity" else []
    recipe = load_recipe(minimal, [f'prune=[{{method="{method}",{key}=[0.3]}}]', *attack])
    assert recipe.prune[0].method == method and getattr(recipe.prune[0], key) == (0.3,)
    if attack:
        with pytest.raises(RecipeError, match="measures with an attack"):
            load_recipe(minimal, [f'prune=[{{method="{method}",{key}=[0.3]}}]'])


def test_a_pruner_option_the_method_does_not_take_is_refused_when_loading(minimal: Path) -> None:
    assert "round_to" not in method_options("spectral") and "round_to" in method_options("epsilon")
    with pytest.raises(RecipeError, match=r"prune\[0\]\.round_to = 4 .*does not take 'round_to'"):
        load_recipe(minimal, ["prune.0.method=spectral", "prune.0.round_to=4"])
    with pytest.raises(RecipeError, match=r"prune\[0\]\.q = 0\.5 is invalid: q must be"):
        load_recipe(minimal, ["prune.0.q=0.5"])  # checked by the pruner itself


@pytest.mark.parametrize("kind", list(REGULARIZERS))
def test_every_regularizer_kind_is_accepted_with_the_options_of_its_class(minimal: Path, kind: str) -> None:
    spec = RegularizerSpec(kind, 0.1)
    assert isinstance(spec.build(), REGULARIZERS[kind])
    options = regularizer_options(kind)
    assert "layers" in options and "weight" not in options
    recipe = load_recipe(minimal, [f'train.regularizers=[{{kind="{kind}",weight=0.5}}]'])
    assert recipe.train.regularizers == (RegularizerSpec(kind, 0.5),)
    with pytest.raises(RecipeError) as info:
        load_recipe(minimal, [f'train.regularizers=[{{kind="{kind}",weight=0.5,bogus=1}}]'])
    assert all(o in str(info.value) for o in options)


def test_a_regularizer_error_names_the_argument_at_fault() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        RegularizerSpec("beta", 1.0, {"top": 2.0})
    assert info.value.argument == "top"
    with pytest.raises(InvalidArgumentError) as info:
        RegularizerSpec("beta", -1.0)
    assert info.value.argument == "weight"


def test_a_mistyped_top_level_key_set_on_the_command_line_says_so(minimal: Path) -> None:
    with pytest.raises(RecipeError, match=r"\(value from --set\): unknown key 'trian'"):
        load_recipe(minimal, ["trian.epochs=3"])


def test_the_command_line_offers_the_registries() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    prune_method = next(a for a in sub.choices["prune"]._actions if a.dest == "method")
    eval_norm = next(a for a in sub.choices["eval"]._actions if a.dest == "norm")
    assert list(prune_method.choices) == list(PRUNERS)
    assert list(eval_norm.choices) == list(NORMS)
