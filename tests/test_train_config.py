"""FitConfig and AdversarialConfig: validated once, in __post_init__, every error naming its
field in ``argument=`` (recipes map it back to the TOML key)."""

from __future__ import annotations

import dataclasses

import pytest

from robustprune.attacks import ADVERSARIAL_KINDS, NORMS, AdversarialConfig
from robustprune.errors import InvalidArgumentError
from robustprune.train import SCHEDULERS, FitConfig


@pytest.mark.parametrize(
    "field,value",
    [("kind", "cw"), ("norm", "L1"), ("eps", -0.1), ("eps", float("nan")), ("eps", True),
     ("steps", -1), ("steps", 2.5), ("step_size", -1.0), ("step_size", float("inf")),
     ("beta", -1.0), ("beta", "6")],
)
def test_adversarial_config_errors_name_the_field(field, value):
    with pytest.raises(InvalidArgumentError) as info:
        AdversarialConfig(**{"eps": 0.1, field: value})
    assert info.value.argument == field


@pytest.mark.parametrize(
    "field,value",
    [("epochs", -1), ("epochs", 1.5), ("lr", 0.0), ("lr", float("inf")), ("weight_decay", -1.0),
     ("momentum", -0.5), ("warmup_epochs", -1), ("min_lr", -1.0), ("clip_grad_norm", 0.0),
     ("optimizer", "nope"), ("scheduler", "nope"), ("scheduler", "plateau"), ("amp", "fp8"),
     ("adversarial", 3), ("adversarial", {"kind": "pgd"}), ("optimizer_kwargs", [1]),
     ("scheduler_kwargs", "x")],
)
def test_fit_config_errors_name_the_field(field, value):
    with pytest.raises(InvalidArgumentError) as info:
        FitConfig(**{"epochs": 1, field: value})
    assert info.value.argument == field


def test_fit_config_replace_revalidates_and_refuses_unknown_fields():
    cfg = FitConfig(epochs=2)
    assert cfg.replace(lr=0.1).lr == 0.1 and cfg.lr == 0.05
    with pytest.raises(InvalidArgumentError) as info:
        cfg.replace(lr=-1.0)
    assert info.value.argument == "lr"
    with pytest.raises(InvalidArgumentError) as info:
        cfg.replace(nope=1)
    assert info.value.argument == "nope"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1  # type: ignore[misc]


def test_every_listed_scheduler_kind_and_norm_is_accepted():
    for scheduler in (*SCHEDULERS, "none", None):
        assert FitConfig(epochs=1, scheduler=scheduler).scheduler == scheduler
    for kind in ADVERSARIAL_KINDS:
        for norm in NORMS:
            cfg = FitConfig(epochs=1, adversarial={"kind": kind, "norm": norm, "eps": 0.1})
            assert cfg.adversarial == AdversarialConfig(kind=kind, norm=norm, eps=0.1)
