"""Robustness-sensitivity pruning: each group's measured adversarial-loss increase is exactly
that of the structurally cut model, the allocation is monotone and convex, the budget is hit,
robust-relevant groups keep more, and bad input is refused before anything changes."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pruners_importance import assert_same, snapshot
from torch import nn

import robustprune as rp
from robustprune.attacks import AdversarialConfig, pgd
from robustprune.errors import InvalidArgumentError, RobustPruneError
from robustprune.models import create_model
from robustprune.pruners import (
    ChannelPruner,
    GroupL2Importance,
    PlanContext,
    Rule,
    SensitivityPruner,
    SensitivityRule,
)
from robustprune.pruners.groups import collect_groups
from robustprune.pruners.prefix import Call, reusable_calls
from robustprune.pruners.sensitivity import GroupSensitivity, removal_order, unit_costs
from robustprune.pruners.tracing import trace_model

ADV = AdversarialConfig(kind="pgd", eps=0.05, steps=2)
CASES = {
    "resnet18-cifar": (lambda: create_model("resnet18-cifar", width=8), (3, 32, 32)),
    "cnn-small": (lambda: create_model("cnn-small"), (1, 8, 8)),
    # LayerNorm over the channels: zeroing channels would not be exact, real cuts are
    "timm:convnext_atto": (lambda: create_model("timm:convnext_atto", input_shape=(3, 32, 32)), (3, 32, 32)),
}


def _data(n: int, shape, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(0, 10, (n,), generator=g)


class CutOneGroup(Rule):
    """Keep ``k`` units of the group rooted at ``name``, leave every other group alone."""

    name = "cut-one"
    strength = 0.0

    def __init__(self, group: str, k: int) -> None:
        self.group, self.k = group, k

    def keep_counts(self, groups, strength):
        return [self.k if g.name == self.group else None for g in groups]

    def breakpoints(self, groups):
        return [0.0]


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


# --------------------------------------------------------------------------- measurement


@pytest.mark.parametrize("case", ["resnet18-cifar", "cnn-small", pytest.param("timm:convnext_atto", marks=pytest.mark.slow)])
def test_measured_loss_increase_is_that_of_the_structurally_pruned_model(case):
    build, shape = CASES[case]
    dense = build().eval()
    x, y = _data(24, shape)
    pruner = SensitivityPruner((x, y), ADV, target_macs=0.5, n_examples=24, seed=5)
    pruner.plan(dense)
    measured = pruner.rule.measured
    assert measured.examples == 24 and measured.evaluations == 1 + sum(len(s.kept) for s in measured.groups)
    assert all(s.loss for s in measured.groups)

    x_adv = pgd(dense, x, y, eps=ADV.eps, steps=ADV.steps, generator=torch.Generator().manual_seed(5))
    base = _ce(dense, x_adv, y)
    assert measured.base_loss == pytest.approx(base, rel=1e-5)
    checks = [(s, k, loss, macs) for s in measured.groups for k, loss, macs in zip(s.kept, s.loss, s.macs)]
    for s, k, loss, macs in checks[:: max(1, len(checks) // 12)]:
        cut = copy.deepcopy(dense)
        report = ChannelPruner(CutOneGroup(s.name, k))(cut, x[:1])
        assert (report.macs_before - report.macs_after) == macs, (s.name, k)
        assert loss == pytest.approx(_ce(cut, x_adv, y) - base, abs=1e-5), (s.name, k)


def test_the_cut_widths_are_the_measured_fractions_of_each_group_top_units():
    dense, shape = CASES["cnn-small"][0](), CASES["cnn-small"][1]
    pruner = SensitivityPruner(_data(8, shape), ADV, target_macs=0.5, widths=(0.5, 0.1, 0.75), min_keep=4)
    pruner.plan(dense)
    for s in pruner.rule.measured.groups:
        expected = sorted({max(4, math.ceil(w * s.total)) for w in (0.75, 0.5, 0.1)} - {s.total}, reverse=True)
        assert list(s.kept) == expected


# --------------------------------------------------------------------------- allocation


def test_unit_costs_are_the_convexified_marginal_loss_per_mac():
    # removed units 0, 3, 5, 8, 9 with loss 0, .1, .5, .4, 2: the hull skips the point at 5
    s = GroupSensitivity("g", 10, kept=(7, 5, 2, 1), loss=(0.1, 0.5, 0.4, 2.0), macs=(30, 50, 80, 90))
    costs = unit_costs(s)
    assert costs == pytest.approx([0.1 / 30] * 3 + [0.3 / 50] * 5 + [1.6 / 10])


@settings(max_examples=50, deadline=None)
@given(
    total=st.integers(2, 40),
    losses=st.lists(st.floats(-1.0, 5.0), min_size=1, max_size=5),
    per_unit=st.lists(st.integers(1, 50), min_size=40, max_size=40),
)
def test_unit_costs_never_decrease_within_a_group(total, losses, per_unit):
    kept = sorted({max(1, min(total - 1, round(total * (1 - (i + 1) / (len(losses) + 1))))) for i in range(len(losses))},
                  reverse=True)
    macs = [sum(per_unit[: total - k]) for k in kept]
    s = GroupSensitivity("g", total, tuple(kept), tuple(losses[: len(kept)]), tuple(macs))
    costs = unit_costs(s)
    assert len(costs) == total - kept[-1]
    assert all(a <= b for a, b in zip(costs, costs[1:]))


def test_removal_order_takes_the_cheapest_units_first_over_all_groups():
    cheap = GroupSensitivity("cheap", 4, kept=(2, 1), loss=(0.0, 0.0), macs=(20, 30))
    costly = GroupSensitivity("costly", 4, kept=(2, 1), loss=(1.0, 3.0), macs=(20, 30))
    order = removal_order([costly, cheap])
    assert order == [1, 1, 1, 0, 0, 0]


def test_allocation_is_monotone_in_strength_and_solves_target_macs():
    model = create_model("resnet18-cifar", width=8)
    x, y = _data(16, (3, 32, 32))
    trace = trace_model(model, x[:1])
    groups = tuple(collect_groups(trace.clone, trace.graph, ["fc"], GroupL2Importance()))
    rule = SensitivityRule((x, y), ADV, n_examples=16)
    cost = rule.prepare(PlanContext(model, x[:1], groups))
    assert cost["loss_evaluations"] == rule.measured.evaluations
    previous = [g.total for g in groups]
    points = rule.breakpoints(groups)
    assert points == sorted(points)
    for s in points:
        counts = rule.keep_counts(groups, s)
        assert all(c <= p for c, p in zip(counts, previous)), s
        previous = counts
    floor = [s.kept[-1] if s.kept else s.total for s in rule.measured.groups]
    assert previous == floor  # the strongest setting cuts every group to its smallest width


@pytest.mark.parametrize("case,target", [("resnet18-cifar", 0.5), ("resnet18-cifar", 0.25), ("cnn-small", 0.5)])
def test_sensitivity_hits_target_macs_within_one_percent(case, target):
    build, shape = CASES[case]
    model = build()
    x, y = _data(16, shape)
    report = rp.prune(model, method="sensitivity", target_macs=target, data=(x, y), adversarial=ADV, n_examples=16)
    assert abs(report.macs_kept - target) <= 0.01 * target
    assert model(x[:2]).shape == (2, 10)
    s = report.setting
    assert s["loss_evaluations"] > 1 and s["sensitivity_seconds"] >= 0 and 0 < s["ratio"] < 1
    assert "loss_evaluations=" in str(report) and "sensitivity_seconds=" in str(report)


def test_ratio_removes_that_fraction_of_all_units():
    model = create_model("cnn-small")
    x, y = _data(16, (1, 8, 8))
    report = rp.prune(model, method="sensitivity", ratio=0.3, data=(x, y), adversarial=ADV, n_examples=16)
    total = sum(r.total for r in report.rows)
    assert sum(r.kept for r in report.rows) == total - (total - math.floor(total * 0.7))
    assert report.setting["ratio"] == 0.3 and report.setting["target_macs"] is None


class TwoBranches(nn.Module):
    """A stem feeding two equal convolution branches, concatenated into a mixing layer; the
    mixing layer ignores the ``dead`` branch (zero weights), so cutting it costs nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.live = nn.Conv2d(8, 8, 3, padding=1)
        self.dead = nn.Conv2d(8, 8, 3, padding=1)
        self.mix = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)
        with torch.no_grad():
            self.mix.weight[:, 8:] = 0
            self.head.weight.mul_(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        z = torch.cat([F.relu(self.live(h)), F.relu(self.dead(h))], 1)
        return self.head(F.relu(self.mix(z)).mean((2, 3)))


def test_a_group_whose_cut_costs_loss_keeps_more_than_an_equal_macs_group_whose_cut_is_free():
    model = TwoBranches().eval()
    x = _data(32, (1, 8, 8))[0]
    with torch.no_grad():
        y = model(x).argmax(1)  # the dense model is right: cutting what it uses costs loss
    pruner = SensitivityPruner((x, y), AdversarialConfig(eps=0.02, steps=2), target_macs=0.5, n_examples=32)
    report = pruner(model, x[:1])
    by_group = {s.name: s for s in pruner.rule.measured.groups}
    live, dead = by_group["live"], by_group["dead"]
    assert live.macs == dead.macs  # equal MACs per unit
    assert min(live.loss) > 1e-3 and max(abs(v) for v in dead.loss) < 1e-5
    kept = {r.name: r.kept for r in report.rows}
    assert kept["live"] == live.total and kept["dead"] <= live.total // 2
    assert abs(report.macs_kept - 0.5) <= 0.05  # one unit here is ~6% of the MACs


# --------------------------------------------------------------------------- the model and the RNG


def test_planning_leaves_the_model_and_the_global_rng_untouched_and_is_deterministic():
    model = create_model("cnn-small")
    model.features[1].train()
    x, y = _data(16, (1, 8, 8))
    F.cross_entropy(model(x), y).backward()
    before = snapshot(model)
    rng = torch.get_rng_state()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
    pruner = SensitivityPruner(loader, ADV, target_macs=0.5, n_examples=16)
    first = pruner.plan(model)
    second = pruner.plan(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(model, before)
    assert [g.keep for g in first.groups] == [g.keep for g in second.groups]


def test_reusable_calls_are_the_outermost_calls_ending_before_the_first_changed_call():
    calls = [Call("", 0, 0, 13), Call("a", 0, 1, 4), Call("a.x", 0, 2, 3), Call("b", 0, 5, 8),
             Call("b.x", 0, 6, 7), Call("c", 0, 9, 12), Call("c.x", 0, 10, 11)]
    assert reusable_calls(calls, ["c.x"]) == (("a", 0), ("b", 0))
    assert reusable_calls(calls, ["b.x"]) == (("a", 0),)
    assert reusable_calls(calls, ["a"]) == ()
    assert reusable_calls(calls, ["never.called"]) == ()


# --------------------------------------------------------------------------- bad input


def _bad_cases() -> dict[str, tuple[dict, str]]:
    x, y = _data(8, (1, 8, 8))
    good = dict(data=(x, y), adversarial=ADV, target_macs=0.5)
    return {
        "width 0": ({**good, "widths": (0.5, 0.0)}, "widths"),
        "width 1": ({**good, "widths": (1.0,)}, "widths"),
        "no widths": ({**good, "widths": ()}, "widths"),
        "widths a string": ({**good, "widths": "0.5"}, "widths"),
        "n_examples 0": ({**good, "n_examples": 0}, "n_examples"),
        "n_examples float": ({**good, "n_examples": 2.5}, "n_examples"),
        "inputs out of range": ({**good, "data": (x * 255, y)}, "data"),
        "nan inputs": ({**good, "data": (x * float("nan"), y)}, "data"),
        "float labels": ({**good, "data": (x, y.float())}, "data"),
        "data not batches": ({**good, "data": 3}, "data"),
        "adversarial not a config": ({**good, "adversarial": {"eps": 0.1}}, "adversarial"),
        "no data": ({k: v for k, v in good.items() if k != "data"}, "data"),
        "no adversarial": ({k: v for k, v in good.items() if k != "adversarial"}, "adversarial"),
        "unknown importance": ({**good, "importance": "magic"}, "importance"),
        "adv-taylor by name": ({**good, "importance": "adv-taylor"}, "importance"),
        "ratio and target_macs": ({**good, "ratio": 0.3}, "target_macs"),
        "neither ratio nor target_macs": ({**good, "target_macs": None}, "target_macs"),
        "ratio out of range": ({**good, "target_macs": None, "ratio": 1.5}, "ratio"),
        "seed negative": ({**good, "seed": -1}, "seed"),
        "min_keep 0": ({**good, "min_keep": 0}, "min_keep"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_is_refused_naming_the_argument_with_the_model_unchanged(case):
    kw, argument = _bad_cases()[case]
    model = create_model("cnn-small")
    model.features[1].train()
    F.cross_entropy(model(torch.rand(2, 1, 8, 8)), torch.tensor([1, 2])).backward()
    before = snapshot(model)
    with pytest.raises(InvalidArgumentError) as info:
        rp.prune(model, method="sensitivity", **kw)
    assert info.value.argument == argument and len(str(info.value)) > 30
    assert_same(model, before)


def test_a_rule_that_was_not_prepared_says_how_to_use_it():
    x, y = _data(8, (1, 8, 8))
    rule = SensitivityRule((x, y), ADV)
    with pytest.raises(RobustPruneError, match="prepare"):
        rule.keep_counts([], 0.5)


# --------------------------------------------------------------------------- cost


@pytest.mark.slow
def test_the_benchmark_dry_run_reports_seconds_and_the_budget_ratio(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sensitivity.py"
    spec = importlib.util.spec_from_file_location("_bench_sensitivity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "sens.json"
    assert module.main(["--dry-run", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["sensitivity"]["seconds"] > 0 and data["sensitivity"]["ratio_to_budget"] > 0
    assert data["sensitivity"]["loss_evaluations"] > 1 and data["adv_taylor"]["prepare_seconds"] > 0


_DDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from robustprune.attacks import AdversarialConfig
    from robustprune.models import create_model
    from robustprune.pruners import AdvTaylorImportance, EpsilonPruner, SensitivityPruner

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(10 + rank)  # every rank sees different data
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    adv = AdversarialConfig(eps=0.05, steps=2)
    torch.manual_seed(0)
    model = create_model("cnn-small")
    sens = SensitivityPruner((x, y), adv, target_macs=0.5, n_examples=16).plan(model)
    taylor = EpsilonPruner(target_macs=0.5, importance=AdvTaylorImportance((x, y), adv)).plan(model)
    out = {"sensitivity": [g.keep for g in sens.groups], "loss": sens.setting["adversarial_loss"],
           "examples": sens.setting["sensitivity_examples"], "taylor": [g.keep for g in taylor.groups],
           "batches": taylor.setting["importance_batches"], "world": dist.get_world_size()}
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_every_rank_makes_the_same_decision_under_torchrun(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert a["world"] == 2 and a == b
    assert a["examples"] == 32 and a["batches"] == 2  # both ranks' data counted
