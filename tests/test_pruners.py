"""Pruners: ε-targeted, fixed-ratio, global and spectral pruning on every supported architecture."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import robustprune as rp
from robustprune.errors import ModelNotSupportedError, PruningError, RobustPruneError
from robustprune.metrics import k_for_eps, relative_residual, residual_curve
from robustprune.models import create_model
from robustprune.pruners import (
    EpsilonPruner,
    FixedRatioPruner,
    GlobalMagnitudePruner,
    SpectralPruner,
    count_macs_params,
    infer_example_inputs,
)
from robustprune.pruners.tracing import trace_model

# one case per architecture family; small inputs keep the big ones fast
MODEL_CASES = {
    "fcn": ("fcn", (1, 8, 8), {}),
    "cnn-small": ("cnn-small", (1, 8, 8), {}),
    "resnet18-cifar": ("resnet18-cifar", (3, 16, 16), {"width": 8}),
    "vgg16-cifar": ("vgg16-cifar", (3, 32, 32), {"width_mult": 0.125}),
    "torchvision:resnet50": ("torchvision:resnet50", (3, 64, 64), {}),
    "torchvision:mobilenet_v3_small": ("torchvision:mobilenet_v3_small", (3, 64, 64), {}),
    "timm:convnext_atto": ("timm:convnext_atto", (3, 64, 64), {}),
    "timm:vit_tiny_patch16_224": ("timm:vit_tiny_patch16_224", (3, 32, 32), {}),
}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), k
    assert not getattr(model, "robustprune_history", None)


def _attention_modules(model: nn.Module):
    return [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")]


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_every_architecture_prunes_to_a_working_model_without_emptying_a_group(case):
    name, shape, kw = MODEL_CASES[case]
    model = create_model(name, input_shape=shape, **kw)
    x = torch.rand(2, *shape)
    with torch.no_grad():
        out_shape = model.eval()(x).shape
    model.train()
    frozen = next(n for n, p in model.named_parameters() if p.ndim > 1)
    model.get_parameter(frozen).requires_grad_(False)

    report = rp.prune(model, eps=0.99, example_inputs=x[:1])

    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert not model.get_parameter(frozen).requires_grad  # gradient flags restored
    assert all(p.requires_grad for n, p in model.named_parameters() if n != frozen)
    with torch.no_grad():
        assert model.eval()(x).shape == out_shape
    assert report.rows and all(r.kept >= 1 for r in report.rows)
    assert all(r.eps <= r.target + 1e-12 for r in report.rows)
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert (report.macs_after, report.params_after) == count_macs_params(model, x[:1])
    for attn in _attention_modules(model):  # heads stay consistent, both attention paths agree
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
        assert attn.proj.in_features == attn.num_heads * attn.head_dim
    if _attention_modules(model):
        _assert_fused_and_manual_attention_agree(model, x)


def _assert_fused_and_manual_attention_agree(model: nn.Module, x: torch.Tensor) -> None:
    outs = []
    for fused in (True, False):
        for attn in _attention_modules(model):
            attn.fused_attn = fused
        with torch.no_grad():
            outs.append(model.eval()(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_pruning_dead_head_dimensions_leaves_vit_outputs_unchanged_on_both_attention_paths():
    model = create_model("timm:vit_tiny_patch16_224", input_shape=(3, 32, 32)).eval()
    dead = [0, 5, 17, 40, 63]  # head dimensions zeroed in every head of every block
    with torch.no_grad():
        for attn in _attention_modules(model):
            hd, heads = attn.head_dim, attn.num_heads
            rows = [part * heads * hd + h * hd + j for part in range(3) for h in range(heads) for j in dead]
            attn.qkv.weight[rows] = 0
            attn.qkv.bias[rows] = 0
            attn.proj.weight[:, [h * hd + j for h in range(heads) for j in dead]] = 0
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)

    report = EpsilonPruner(eps={"blocks.*.attn.qkv": 1e-6}).__call__(model, x[:1])

    attn_rows = [r for r in report.rows if r.layers[0].endswith("attn.qkv")]
    assert len(attn_rows) == 12 and all(r.kept == 64 - len(dead) for r in attn_rows)
    assert all(a.head_dim == 64 - len(dead) for a in _attention_modules(model))
    for fused in (True, False):
        for attn in _attention_modules(model):
            attn.fused_attn = fused
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- selection


def _fcn_theta(model: nn.Module) -> torch.Tensor:
    """Group ℓ2 magnitude of the first hidden layer by hand: rows of W1 and columns of W2."""
    w1, w2 = model.features[1].weight.detach(), model.features[3].weight.detach()
    return ((w1.pow(2).sum(1) + w2.pow(2).sum(0)) / 2).double().sqrt()


def test_pruned_channels_are_exactly_the_lowest_importance_ones():
    model = create_model("fcn", width=48, depth=2)
    with torch.no_grad():  # spread the row norms so the ranking is unambiguous
        model.features[1].weight.mul_(torch.linspace(0.1, 3.0, 48).roll(17)[:, None])
    theta = _fcn_theta(model)
    w1 = model.features[1].weight.detach().clone()

    report = rp.prune(model, eps=0.3)

    k = k_for_eps(theta, 0.3)
    row = next(r for r in report.rows if r.name == "features.1")
    keep = torch.sort(theta, descending=True, stable=True).indices[:k].sort().values
    assert row.kept == k and model.features[1].out_features == k
    assert torch.equal(model.features[1].weight, w1[keep])
    dropped = torch.ones(48, dtype=torch.bool)
    dropped[keep] = False
    assert theta[keep].min() > theta[dropped].max()
    assert row.eps == pytest.approx(relative_residual(theta, k)) and row.eps <= 0.3


def test_epsilon_pruner_adapts_to_layer_energy_while_fixed_ratio_does_not():
    def model_with_one_concentrated_layer() -> nn.Module:
        model = create_model("fcn", width=64, depth=2)
        with torch.no_grad():
            w1, w2, head = model.features[1].weight, model.features[3].weight, model.head.weight
            w1.mul_(0.01)
            w1[:4] *= 1000.0  # layer 1: energy in 4 units
            w2.copy_(F.normalize(torch.randn_like(w2), dim=1))  # layer 2: equal rows ...
            w2.mul_(0.01)  # ... small next to layer 1's strong units
            head.copy_(F.normalize(torch.randn_like(head), dim=0))
        return model

    eps_model, fixed_model = model_with_one_concentrated_layer(), model_with_one_concentrated_layer()
    by_eps = {r.name: r.kept for r in rp.prune(eps_model, eps=0.1).rows}
    by_ratio = {r.name: r.kept for r in rp.prune(fixed_model, method="fixed", ratio=0.5).rows}

    assert by_eps["features.1"] <= 8 and by_eps["features.3"] >= 56
    assert by_ratio == {"features.1": 32, "features.3": 32}


@pytest.mark.parametrize("method", ["epsilon", "fixed", "global"])
def test_target_macs_is_hit_within_one_percent(method):
    model = create_model("resnet18-cifar", width=32)
    report = rp.prune(model, target_macs=0.5, method=method)
    assert abs(report.macs_kept - 0.5) <= 0.005
    macs, _ = count_macs_params(model, torch.rand(1, 3, 32, 32))
    assert macs == report.macs_after
    solved = report.setting["eps" if method == "epsilon" else "ratio"]
    assert isinstance(solved, float) and 0 < solved < 1


@pytest.mark.parametrize("pruner", [FixedRatioPruner(ratio=0.99), GlobalMagnitudePruner(ratio=0.99)])
def test_no_group_is_emptied_at_ratio_099(pruner):
    model = create_model("cnn-small")
    report = pruner(model, torch.rand(1, 1, 8, 8))
    assert all(r.kept >= 1 for r in report.rows)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_global_pruner_uses_one_threshold_across_groups():
    model = create_model("fcn", width=32, depth=2)
    with torch.no_grad():
        model.features[3].weight.mul_(0.01)  # the second group is globally unimportant
        model.head.weight.mul_(0.01)
    report = GlobalMagnitudePruner(ratio=0.4)(model)
    kept = {r.name: r.kept for r in report.rows}
    assert kept["features.3"] < kept["features.1"]
    assert sum(kept.values()) == math.floor(64 * (1 - 0.4) + 1e-9)  # 26 of 64 units removed


def test_round_to_and_min_keep_bound_every_group():
    model = create_model("cnn-small", widths=(24, 40, 64))
    report = EpsilonPruner(eps=0.9, round_to=8, min_keep=5)(model)
    for r in report.rows:
        assert r.kept >= 5
        assert r.kept % 8 == 0 or r.kept == r.total


def test_eps_dict_prunes_only_matching_groups():
    model = create_model("fcn", width=32, depth=2)
    report = rp.prune(model, eps={"features.1": 0.6})
    rows = {r.name: r for r in report.rows}
    assert rows["features.1"].kept < 32 and rows["features.1"].target == 0.6
    assert rows["features.3"].kept == 32 and rows["features.3"].target is None
    with pytest.raises(RobustPruneError, match="matches no prunable layer"):
        rp.prune(create_model("fcn"), eps={"features.9*": 0.5})


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(0.01, 0.99),
    q=st.sampled_from([1.0, 2.0, math.inf]),
    round_to=st.one_of(st.none(), st.integers(1, 8)),
    min_keep=st.integers(1, 6),
)
def test_every_group_meets_its_eps_target_and_keeps_its_minimum(eps, q, round_to, min_keep):
    model = _SMALL_FCN
    plan = EpsilonPruner(eps=eps, q=q, round_to=round_to, min_keep=min_keep).plan(model)
    for g in plan.groups:
        assert g.eps <= eps + 1e-12 and g.kept >= min(min_keep, g.total) >= 1
        assert round_to is None or g.kept % round_to == 0 or g.kept == g.total
    # the first group by hand: k_q(theta, eps), raised to min_keep, rounded up to round_to
    k = max(k_for_eps(_fcn_theta(model), eps, q), min_keep)
    while round_to and k < 24 and k % round_to:
        k += 1
    assert next(g for g in plan.groups if g.name == "features.1").kept == min(k, 24)


_SMALL_FCN = create_model("fcn", width=24, depth=2)


def test_residual_curve_matches_the_metric_definition():
    theta = torch.rand(40) ** 3
    for q in (1, 2, math.inf):
        curve = residual_curve(theta, q)
        expected = torch.tensor([relative_residual(theta, k, q) for k in range(1, 41)], dtype=torch.float64)
        torch.testing.assert_close(curve, expected)


# --------------------------------------------------------------------------- spectral


def test_spectral_layers_equal_the_rank_r_truncation_and_only_where_it_saves_parameters():
    model = create_model("cnn-small", widths=(16, 48), convs_per_stage=1).double().eval()
    with torch.no_grad():  # make the second conv nearly rank 3 so it factorizes
        w = model.features[4].weight
        w.copy_(torch.einsum("or,rk->ok", torch.randn(48, 3), torch.randn(3, 16 * 9)).view_as(w) + 1e-3 * torch.randn_like(w))
    dense = copy.deepcopy(model)
    report = SpectralPruner(eps=0.05)(model, torch.rand(1, 1, 8, 8, dtype=torch.float64))

    rows = {r.name: r for r in report.rows}
    conv = rows["features.4"]
    assert conv.kept == 3 and conv.eps <= 0.05 and not conv.note
    assert rows["features.0"].note.startswith("kept dense")  # 16x9 conv: no saving at its rank
    factored = model.features[4]
    assert isinstance(factored, nn.Sequential) and factored[0].out_channels == 3
    layer = dense.features[4]
    w = layer.weight.detach().double().reshape(48, -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    w3 = (u[:, :3] * s[:3]) @ vh[:3]
    x = torch.rand(2, 16, 8, 8, dtype=torch.float64)
    assert layer.bias is None
    expected = F.conv2d(x, w3.view(48, 16, 3, 3), None, padding=1)
    torch.testing.assert_close(factored(x), expected, rtol=1e-10, atol=1e-10)
    assert report.params_after < report.params_before


def test_spectral_linear_becomes_two_linears_computing_the_truncation():
    model = create_model("fcn", width=64, depth=2).double().eval()
    lin = copy.deepcopy(model.features[3])
    report = SpectralPruner(eps=0.5)(model)
    row = next(r for r in report.rows if r.name == "features.3")
    r = row.kept
    factored = model.features[3]
    assert factored.a.weight.shape == (r, 64) and factored.b.weight.shape == (64, r)
    u, s, vh = torch.linalg.svd(lin.weight.detach().double(), full_matrices=False)
    x = torch.randn(5, 64, dtype=torch.float64)
    expected = F.linear(x, (u[:, :r] * s[:r]) @ vh[:r], lin.bias.double())
    torch.testing.assert_close(factored(x), expected, rtol=1e-10, atol=1e-10)
    assert row.eps == pytest.approx(torch.sqrt((s[r:] ** 2).sum() / (s**2).sum()).item())


def test_spectral_target_macs_within_one_percent():
    model = create_model("cnn-small", widths=(32, 64, 128))
    report = rp.prune(model, target_macs=0.6, method="spectral")
    assert abs(report.macs_kept - 0.6) <= 0.006


# --------------------------------------------------------------------------- inference


def test_prune_with_no_example_inputs_works_on_registry_timm_and_torchvision_models():
    import timm
    import torchvision

    models = [
        create_model("resnet18-cifar", width=16),
        create_model("fcn"),
        torchvision.models.resnet50(num_classes=10),
        timm.create_model("convnext_atto", num_classes=10),
    ]
    for model in models:
        report = rp.prune(model, eps=0.05)
        assert report.macs_after <= report.macs_before
    assert infer_example_inputs(models[2]).shape == (1, 3, 224, 224)
    assert infer_example_inputs(models[3]).shape == (1, 3, 224, 224)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    assert infer_example_inputs(vit).shape == (1, 3, 32, 32)
    assert infer_example_inputs(nn.Sequential(nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 2))).shape == (1, 7)


def _convnet_without_spec() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def test_missing_example_inputs_that_cannot_be_inferred_raise_and_leave_the_model_unchanged():
    model = _convnet_without_spec()
    before = _state(model)
    with pytest.raises(RobustPruneError, match="example_inputs"):
        rp.prune(model, eps=0.5)
    _assert_unchanged(model, before)
    rp.prune(model, eps=0.5, example_inputs=torch.rand(1, 3, 8, 8))  # works once given


# --------------------------------------------------------------------------- bad input


BAD_CALLS = {
    "eps=0": dict(eps=0.0),
    "eps=1": dict(eps=1.0),
    "eps<0": dict(eps=-0.1),
    "eps>1": dict(eps=1.5),
    "eps=nan": dict(eps=float("nan")),
    "eps and target_macs": dict(eps=0.1, target_macs=0.5),
    "neither eps nor target_macs": dict(),
    "target_macs=0": dict(target_macs=0.0),
    "target_macs>1": dict(target_macs=1.5),
    "unknown method": dict(eps=0.1, method="magic"),
    "eps for a ratio method": dict(eps=0.1, method="fixed"),
    "ratio out of range": dict(method="fixed", ratio=1.0),
    "unknown option": dict(eps=0.1, sparsity=0.5),
    "wrong input shape": dict(eps=0.1, example_inputs=torch.rand(1, 3, 32, 32)),
    "input not a tensor": dict(eps=0.1, example_inputs=[[1, 2]]),
    "type in ignored_layers": dict(eps=0.1, ignored_layers=[nn.Linear]),
    "foreign module in ignored_layers": dict(eps=0.1, ignored_layers=[nn.Linear(3, 3)]),
    "unknown name in ignored_layers": dict(eps=0.1, ignored_layers=["features.99"]),
    "min_keep=0": dict(eps=0.1, min_keep=0),
    "round_to=0": dict(eps=0.1, round_to=0),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_a_clear_error_and_leaves_the_model_untouched(case):
    model = create_model("fcn")
    before = _state(model)
    with pytest.raises(RobustPruneError) as info:
        rp.prune(model, **BAD_CALLS[case])
    assert len(str(info.value)) > 30  # says what was wrong and what to do
    _assert_unchanged(model, before)


def test_type_in_ignored_layers_names_the_fix():
    with pytest.raises(RobustPruneError, match=r"module instances.*ignored_layers=\[model.fc\]"):
        EpsilonPruner(eps=0.1, ignored_layers=[nn.Conv2d])


class _ChannelShuffle(nn.Module):
    """Averages pairs of channel blocks through a reshape torch-pruning cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        b, _, h, w = y.shape
        y = self.conv2(y.reshape(b, 2, 4, h, w).mean(1))
        return self.fc(y.mean((2, 3)))


def test_a_model_torch_pruning_cannot_handle_gets_an_error_naming_the_layer_and_workaround():
    model = _ChannelShuffle()
    before = _state(model)
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(PruningError, match=r"'conv1'.*ignored_layers=\[model.get_submodule\('conv1'\)\]"):
        rp.prune(model, eps=0.5, example_inputs=x)
    _assert_unchanged(model, before)
    report = rp.prune(model, eps=0.5, example_inputs=x, ignored_layers=[model.conv1])  # the workaround
    assert model(x).shape == (1, 5) and {r.name for r in report.rows} == {"conv2"}


def test_attention_with_per_head_query_norm_is_rejected_before_touching_the_model():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10, qk_norm=True, depth=2)
    before = _state(model)
    with pytest.raises(ModelNotSupportedError, match="ignored_layers"):
        rp.prune(model, eps=0.5)
    _assert_unchanged(model, before)


# --------------------------------------------------------------------------- plan / apply


def test_plan_never_touches_the_model_and_apply_is_single_use():
    model = create_model("resnet18-cifar", width=8, input_shape=(3, 16, 16))
    before = _state(model)
    pruner = EpsilonPruner(eps=0.5)
    plan = pruner.plan(model)
    _assert_unchanged(model, before)
    assert plan.kept_units < plan.total_units and plan.macs_before > 0

    twin = copy.deepcopy(model)  # a plan also applies to an identical copy (re-traced)
    report_twin = pruner.apply(twin, plan)
    report = pruner.apply(model, plan)
    assert report.macs_after == report_twin.macs_after
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), n

    pruned = _state(model)
    with pytest.raises(PruningError, match="plan"):
        pruner.apply(model, plan)  # widths no longer match
    assert all(torch.equal(v, pruned[k]) for k, v in model.state_dict().items())


def test_pruning_twice_accumulates_history():
    model = create_model("cnn-small")
    rp.prune(model, eps=0.3)
    rp.prune(model, method="fixed", ratio=0.25)
    rp.prune(model, eps=0.2, method="spectral")
    kinds = [(s["kind"], s["method"]) for s in model.robustprune_history]
    assert kinds == [("channels", "epsilon"), ("channels", "fixed"), ("spectral", "spectral")]
    assert all(s["groups"] for s in model.robustprune_history[:2])


@pytest.mark.parametrize("case", ["resnet18-cifar", "torchvision:mobilenet_v3_small", "timm:convnext_atto", "timm:vit_tiny_patch16_224"])
def test_shape_only_meta_tracing_finds_the_same_groups_and_macs_as_real_tracing(case, monkeypatch):
    from robustprune.pruners import tracing

    name, shape, kw = MODEL_CASES[case]
    model = create_model(name, input_shape=shape, **kw)
    x = torch.rand(1, *shape)
    traces = {meta: trace_model(model, x, meta=meta) for meta in (True, False)}
    assert traces[True].meta is True and traces[False].meta is False  # no silent fallback
    assert (traces[True].macs, traces[True].params) == (traces[False].macs, traces[False].params)
    plans, reports = {}, {}
    for meta in (True, False):  # plan and apply (reusing the plan's trace) in each mode
        monkeypatch.setattr(tracing, "prefer_meta", lambda *_, m=meta: m)
        twin = copy.deepcopy(model)
        plans[meta] = EpsilonPruner(eps=0.5).plan(twin, x)
        reports[meta] = EpsilonPruner(eps=0.5).apply(twin, plans[meta])

    def structure(plan):
        return [(g.name, g.layers, g.total, g.keep, g.root_out, g.channel_groups) for g in plan.groups]

    assert structure(plans[True]) == structure(plans[False])  # same groups, channels, kept sets
    for g, h in zip(plans[True].groups, plans[False].groups):  # scores agree up to float32 sum order
        assert g.eps == pytest.approx(h.eps, abs=1e-6) and g.beta == pytest.approx(h.beta, abs=1e-6)
    assert (plans[True].macs_before, plans[True].params_before) == (plans[False].macs_before, plans[False].params_before)
    assert reports[True].macs_after == reports[False].macs_after
    assert reports[True].params_after == reports[False].params_after


def test_count_macs_params_matches_torch_pruning_counter():
    for model, x in [
        (create_model("resnet18-cifar", width=8), torch.rand(1, 3, 32, 32)),
        (create_model("timm:vit_tiny_patch16_224", input_shape=(3, 32, 32)), torch.rand(1, 3, 32, 32)),
    ]:
        macs, params = tp.utils.count_ops_and_params(model, x)
        assert count_macs_params(model, x) == (int(macs), int(params))


def test_report_renders_as_text_json_and_markdown():
    report = rp.prune(create_model("cnn-small"), eps=0.4)
    text = str(report)
    assert "MACs" in text and "features.0" in text and "ε" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["method"] == "epsilon" and len(data["rows"]) == len(report.rows)
    assert data["macs_kept"] == pytest.approx(report.macs_kept)
    md = report.to_markdown()
    assert "| group | kept |" in md and md.count("\n|") == len(report.rows) + 2
