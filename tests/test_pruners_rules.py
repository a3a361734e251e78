"""Channel rules and the importance contract: a new rule is a small object, breakpoints are
exactly the values k_for_eps compares against, any importance declares what its scores mean."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from hypothesis import given, settings
from hypothesis import strategies as st

from robustprune.errors import RobustPruneError
from robustprune.metrics import k_for_eps, relative_residual, residual_curve
from robustprune.models import create_model
from robustprune.pruners import (
    ChannelPruner,
    EpsilonPruner,
    EpsilonRule,
    FixedRatioPruner,
    FixedRatioRule,
    Group,
    GroupL2Importance,
    Importance,
    Rule,
)

# --------------------------------------------------------------------------- a new rule


class EvenGroupsFraction(Rule):
    """Remove the fraction ``strength`` of the units of every group with an even index; leave
    the odd ones alone (a rule written outside the package, in a few lines)."""

    name = "even-groups"
    solves = "fraction"

    def __init__(self, fraction: float | None = None) -> None:
        self.fraction = fraction

    @property
    def strength(self) -> float | None:
        return self.fraction

    def settings(self) -> dict:
        return {"fraction": self.fraction}

    def keep_counts(self, groups, strength):
        return [g.total - math.floor(g.total * strength) if i % 2 == 0 else None for i, g in enumerate(groups)]

    def breakpoints(self, groups):
        return sorted({m / g.total for i, g in enumerate(groups) if i % 2 == 0 for m in range(g.total)})

    def note(self, group, strength):
        return "" if group.name.endswith("conv1") else "even"


def test_a_rule_defined_outside_the_package_prunes_with_and_without_target_macs():
    model = create_model("resnet18-cifar", width=16)
    pruner = ChannelPruner(EvenGroupsFraction(0.5))
    assert repr(pruner) == "ChannelPruner(fraction=0.5, importance=GroupL2Importance(), min_keep=1)"
    plan = pruner.plan(model)
    assert plan.method == "even-groups"
    for i, g in enumerate(plan.groups):
        if i % 2:
            assert g.kept == g.total
        else:  # the top half by importance (ties to the lower index)
            assert g.kept == g.total - g.total // 2
    report = pruner.apply(model, plan)
    assert report.macs_after < report.macs_before
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)

    dense = create_model("resnet18-cifar", width=16)
    report = ChannelPruner(EvenGroupsFraction(), target_macs=0.8)(copy.deepcopy(dense))
    solved = report.setting["fraction"]
    assert isinstance(solved, float) and 0 < solved < 1
    assert all(r.kept == r.total for i, r in enumerate(report.rows) if i % 2)
    assert {r.note for r in report.rows} <= {"", "even"}
    # the solved fraction is a breakpoint, and no neighbouring one comes closer to 80% of the MACs
    points = sorted({m / r.total for i, r in enumerate(report.rows) if i % 2 == 0 for m in range(r.total)})
    at = points.index(solved)
    for p in (points[at - 1], points[at + 1]):
        other = ChannelPruner(EvenGroupsFraction(p))(copy.deepcopy(dense))
        assert abs(report.macs_kept - 0.8) <= abs(other.macs_kept - 0.8)
    assert abs(report.macs_kept - 0.8) <= 0.02


def test_a_rule_without_strength_needs_target_macs_and_a_non_rule_is_refused():
    with pytest.raises(RobustPruneError, match="target_macs"):
        ChannelPruner(EvenGroupsFraction())
    with pytest.raises(RobustPruneError, match="Rule"):
        ChannelPruner(lambda groups, s: [None] * len(groups))


def test_thin_pruners_are_channel_pruners_with_their_rule():
    eps = EpsilonPruner(eps=0.2, q=1)
    assert isinstance(eps.rule, EpsilonRule) and (eps.eps, eps.q, eps.method) == (0.2, 1.0, "epsilon")
    fixed = FixedRatioPruner(ratio=0.3)
    assert isinstance(fixed.rule, FixedRatioRule) and (fixed.ratio, fixed.method) == (0.3, "fixed")
    model = create_model("cnn-small")
    by_class = EpsilonPruner(eps=0.3).plan(model)
    by_rule = ChannelPruner(EpsilonRule(0.3)).plan(model)
    assert [g.keep for g in by_class.groups] == [g.keep for g in by_rule.groups]
    assert by_class.setting == by_rule.setting


# --------------------------------------------------------------------------- breakpoints


def _group(theta: torch.Tensor) -> Group:
    theta = theta.double()
    return Group("g", ("g",), theta, torch.sort(theta, descending=True, stable=True).indices)


@settings(max_examples=30, deadline=None)
@given(
    # zeros or entries >= 1e-3: consecutive curve values then differ by far more than the
    # 1e-12 round-off slack of k_for_eps (closer breakpoints merge, which is harmless)
    values=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), min_size=2, max_size=40).filter(lambda v: max(v) > 0),
    q=st.sampled_from([1.0, 2.0, math.inf]),
)
def test_at_every_breakpoint_k_for_eps_is_where_the_curve_first_drops_to_it(values, q):
    theta = torch.tensor(values, dtype=torch.float64)
    group = _group(theta)
    rule = EpsilonRule(q=q)
    curve = residual_curve(theta, q)
    for v in rule.breakpoints([group]):
        if v == 0.5 and not (curve == 0.5).any():
            continue  # the placeholder of a curve with no value in (0, 1)
        first = int(torch.nonzero(curve <= v)[0]) + 1
        assert k_for_eps(theta, v, q) == first
        assert rule.keep_counts([group], v) == [first]


def test_breakpoints_are_the_curve_values_in_increasing_order():
    theta = torch.rand(30) ** 2
    points = EpsilonRule().breakpoints([_group(theta)])
    curve = residual_curve(theta)
    assert points == sorted(points)
    assert set(points) == {float(v) for v in curve[:-1] if 0 < v < 1}


# --------------------------------------------------------------------------- importance


def test_default_importance_declares_power_two_and_means_the_square_root_of_group_norms():
    model = create_model("fcn", width=24, depth=2)
    default = EpsilonPruner(eps=0.3).plan(model)
    wrapped = EpsilonPruner(eps=0.3, importance=Importance(
        tp.importance.GroupMagnitudeImportance(p=2, normalizer=None), power=2)).plan(model)
    assert GroupL2Importance().power == 2
    assert [(g.keep, g.eps, g.beta) for g in default.groups] == [(g.keep, g.eps, g.beta) for g in wrapped.groups]
    # a plain callable is theta as is: here the squared norms
    plain = EpsilonPruner(eps=0.3, importance=tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)).plan(model)
    w1, w2 = model.features[1].weight.detach(), model.features[3].weight.detach()
    squared = ((w1.pow(2).sum(1) + w2.pow(2).sum(0)) / 2).double()
    row = next(g for g in plain.groups if g.name == "features.1")
    assert row.kept == k_for_eps(squared, 0.3)
    assert row.eps == pytest.approx(relative_residual(squared, row.kept))
    assert plain.setting["importance"].startswith("<torch_pruning")  # its own repr, as before


def test_importance_power_must_be_positive():
    with pytest.raises(RobustPruneError, match="power"):
        Importance(lambda g: None, power=0)


def test_a_torch_pruning_taylor_importance_works_after_a_backward_pass():
    model = create_model("cnn-small")
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    importance = tp.importance.GroupTaylorImportance()
    report = EpsilonPruner(eps=0.3, importance=importance)(model, x[:1])
    assert report.setting["importance"] == repr(importance)
    assert report.rows and all(1 <= r.kept <= r.total and r.eps <= 0.3 + 1e-12 for r in report.rows)
    assert any(r.kept < r.total for r in report.rows)
    assert model(x).shape == (8, 10)
