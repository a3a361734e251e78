"""Importances by name and the adversarial Taylor importance: scores are torch-pruning's
Taylor scores on the adversarial-loss gradient, computed without touching the model, its
gradients or the global RNG."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

import robustprune as rp
from robustprune.attacks import AdversarialConfig, pgd
from robustprune.errors import InvalidArgumentError, RobustPruneError, UnknownNameError
from robustprune.models import create_model
from robustprune.pruners import (
    IMPORTANCES,
    AdvTaylorImportance,
    EpsilonPruner,
    FixedRatioPruner,
    GlobalMagnitudePruner,
    GroupL2Importance,
    make_importance,
)

ADV = AdversarialConfig(kind="pgd", eps=0.2, steps=3)


def _data(n: int = 16, shape=(1, 8, 8), seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(0, 10, (n,), generator=g)


def snapshot(model: nn.Module) -> dict:
    """Everything a refused or planning call must leave as it was."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "ids": [id(p) for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [(id(p.grad), None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "forward": [("forward" in m.__dict__) for m in model.modules()],
    }


def assert_same(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for key in ("ids", "modes", "requires_grad", "hooks", "forward"):
        assert after[key] == before[key], key
    for (id_a, g_a), (id_b, g_b) in zip(after["grads"], before["grads"]):
        assert id_a == id_b and ((g_a is None and g_b is None) or torch.equal(g_a, g_b))


def _awkward_model() -> nn.Module:
    """cnn-small with stale gradients, a frozen layer, a module in train mode and a hook."""
    model = create_model("cnn-small").eval()
    x, y = _data(4)
    F.cross_entropy(model(x), y).backward()
    model.features[0].weight.requires_grad_(False)
    model.features[0].weight.grad = None
    model.features[1].train()
    model.features[2].register_forward_hook(lambda m, i, o: None)
    return model


def test_adv_taylor_planning_leaves_grads_rng_modes_flags_and_hooks_untouched():
    model = _awkward_model()
    before = snapshot(model)
    rng = torch.get_rng_state()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_data(32)), batch_size=8, shuffle=True)
    plan = EpsilonPruner(target_macs=0.5, importance=AdvTaylorImportance(loader, ADV, n_batches=2)).plan(model)
    assert plan.setting["importance_batches"] == 2 and plan.setting["importance_seconds"] >= 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(model, before)


def test_adv_taylor_scores_equal_torch_pruning_taylor_on_the_adversarial_gradient():
    model = create_model("cnn-small").eval()
    x, y = _data(16)
    importance = AdvTaylorImportance((x, y), ADV, seed=3)
    importance.prepare(model)

    reference = copy.deepcopy(model).eval()  # the same gradient, computed by hand
    x_adv = pgd(reference, x, y, eps=ADV.eps, steps=ADV.steps, generator=torch.Generator().manual_seed(3))
    F.cross_entropy(reference(x_adv), y).backward()
    taylor = tp.importance.GroupTaylorImportance(normalizer=None, multivariable=True)

    graphs = [tp.DependencyGraph().build_dependency(m, example_inputs=x[:1]) for m in (model, reference)]
    pairs = zip(*(g.get_all_groups(ignored_layers=[m.head], root_module_types=(nn.Conv2d, nn.Linear))
                  for g, m in zip(graphs, (model, reference))))
    compared = 0
    for ours, theirs in pairs:
        assert torch.allclose(importance(ours), taylor(theirs), rtol=1e-4, atol=1e-8)
        compared += 1
    assert compared == 6
    assert all(p.grad is None for p in model.parameters())  # swapped in and back out
    again = AdvTaylorImportance((x, y), ADV, seed=3)
    again.prepare(model)
    for group in graphs[0].get_all_groups(ignored_layers=[model.head], root_module_types=(nn.Conv2d,)):
        assert torch.equal(again(group), importance(group))  # deterministic


def test_adv_taylor_prunes_every_channel_pruner_to_target_macs():
    x, y = _data(16, (3, 32, 32))
    for cls in (EpsilonPruner, FixedRatioPruner, GlobalMagnitudePruner):
        model = create_model("resnet18-cifar", width=32)
        report = cls(target_macs=0.5, importance=AdvTaylorImportance((x, y), ADV, n_batches=1))(model)
        assert abs(report.macs_kept - 0.5) <= 0.005, cls.__name__
        assert model(x[:2]).shape == (2, 10)
        assert report.setting["importance"] == "AdvTaylorImportance(kind='pgd', norm='Linf', eps=0.2, steps=3, n_batches=1)"
        assert "importance_seconds=" in str(report)


def test_adv_taylor_crafts_with_each_training_attack_kind():
    x, y = _data(8)
    for kind in ("pgd", "fgsm", "trades"):
        importance = AdvTaylorImportance((x, y), AdversarialConfig(kind=kind, eps=0.1, steps=2))
        report = rp.prune(create_model("cnn-small"), target_macs=0.6, importance=importance)
        assert report.macs_after < report.macs_before
        assert "steps=1" in repr(importance) if kind == "fgsm" else f"kind='{kind}'" in repr(importance)


def test_importances_by_name():
    assert set(IMPORTANCES) == {"l2", "adv-taylor"}
    assert isinstance(make_importance("l2"), GroupL2Importance)
    assert isinstance(make_importance(None), GroupL2Importance)
    x, y = _data(8)
    built = make_importance("adv-taylor", data=(x, y), adversarial=ADV)
    assert isinstance(built, AdvTaylorImportance) and built.n_batches == 4
    model = create_model("cnn-small")
    by_name = EpsilonPruner(eps=0.3, importance="l2").plan(model)
    default = EpsilonPruner(eps=0.3).plan(model)
    assert [g.keep for g in by_name.groups] == [g.keep for g in default.groups]
    fn = lambda group: None  # noqa: E731  (a callable passes through)
    assert make_importance(fn) is fn


def test_unknown_or_underspecified_importance_names_are_refused_naming_the_argument():
    with pytest.raises(UnknownNameError, match="l2, adv-taylor") as info:
        make_importance("taylor")
    assert isinstance(info.value, InvalidArgumentError) and info.value.argument == "importance"
    with pytest.raises(InvalidArgumentError, match=r"data=.*adversarial=.*AdvTaylorImportance") as info:
        EpsilonPruner(eps=0.3, importance="adv-taylor")
    assert info.value.argument == "importance"
    with pytest.raises(InvalidArgumentError, match="importance must be") as info:
        FixedRatioPruner(ratio=0.3, importance=3)
    assert info.value.argument == "importance"


BAD_TAYLOR = {
    "inputs above 1": dict(data=(torch.rand(4, 1, 8, 8) * 3, torch.zeros(4, dtype=torch.long)), argument="data"),
    "nan inputs": dict(data=(torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long)), argument="data"),
    "float labels": dict(data=(torch.rand(4, 1, 8, 8), torch.zeros(4)), argument="data"),
    "not data": dict(data=5, argument="data"),
    "empty loader": dict(data=[], argument="data"),
    "batches of one tensor": dict(data=[torch.rand(4, 1, 8, 8)], argument="data"),
    "adversarial dict": dict(adversarial={"eps": 0.1}, argument="adversarial"),
    "n_batches=0": dict(n_batches=0, argument="n_batches"),
    "seed=-1": dict(seed=-1, argument="seed"),
}


@pytest.mark.parametrize("case", list(BAD_TAYLOR))
def test_bad_adv_taylor_input_is_refused_before_the_model_is_touched(case):
    kw = dict(BAD_TAYLOR[case])
    argument = kw.pop("argument")
    model = _awkward_model()
    before = snapshot(model)
    with pytest.raises(InvalidArgumentError) as info:
        args = {"data": _data(4), "adversarial": ADV, **kw}
        rp.prune(model, target_macs=0.5, importance=AdvTaylorImportance(args.pop("data"), args.pop("adversarial"), **args))
    assert info.value.argument == argument and len(str(info.value)) > 30
    assert_same(model, before)


def test_scoring_without_prepare_says_what_to_do():
    model = create_model("cnn-small")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, 1, 8, 8))
    group = next(iter(graph.get_all_groups(ignored_layers=[model.head], root_module_types=(nn.Conv2d,))))
    with pytest.raises(RobustPruneError, match=r"prepare\(model\)"):
        AdvTaylorImportance(_data(4), ADV)(group)
