"""analyze(): per-layer table, network bounds, audit, certified fraction, rendering, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustprune import metrics
from robustprune.analysis import Report, analyze
from robustprune.attacks import pgd
from robustprune.data import create_datasets
from robustprune.errors import InvalidArgumentError, ModelNotSupportedError, RobustPruneError
from robustprune.layers import fold_for_analysis, prunable_layers
from robustprune.models import create_model

_SMALL = {
    "fcn": ({"width": 16}, (1, 8, 8)),
    "cnn-small": ({"widths": (4, 8), "convs_per_stage": 1}, (1, 8, 8)),
    "resnet18-cifar": ({"width": 4}, (3, 32, 32)),
}


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def trained_fcn():
    """A small FCN trained on digits with a plain loop (normalization inside the model)."""
    torch.manual_seed(0)
    ds = create_datasets("digits")
    x, y = ds.train.tensors
    model = create_model("fcn", width=32, mean=ds.info.mean, std=ds.info.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), ds.test.tensors


@pytest.mark.parametrize("name", list(_SMALL))
def test_report_has_one_row_per_layer_and_renders_in_three_formats(name):
    kw, shape = _SMALL[name]
    model = create_model(name, input_shape=shape, mean=[0.4] * shape[0], std=[0.3] * shape[0], **kw)
    report = analyze(model, torch.rand(2, *shape))
    assert isinstance(report, Report)
    assert [r.name for r in report.rows] == [n for n, _ in prunable_layers(model)]
    text = str(report)
    for row in report.rows:
        assert row.name in text
        assert 1 <= row.spectral.k <= row.spectral.n and 1 <= row.neuron.k <= row.neuron.n
    md = report.to_markdown()
    assert md.count("\n|") >= len(report.rows) + 2
    data = json.loads(json.dumps(report.to_dict()))
    assert len(data["rows"]) == len(report.rows)
    assert set(data["bounds"]) == {"2", "inf"}


def test_rows_satisfy_the_structure_scale_identity():
    model = _randomize_bn(create_model("cnn-small", widths=(6, 8), mean=[0.4], std=[0.3])).eval()
    report = analyze(model, torch.rand(1, 1, 8, 8), eps=0.2)
    for row in report.rows:
        assert row.spectral.structure_factor * row.frobenius == pytest.approx(row.norm_2_matricized, rel=1e-5)
        assert row.neuron.eps <= 0.2 + 1e-12 and row.spectral.eps <= 0.2 + 1e-12


def test_norms_are_measured_on_folded_weights():
    model = _randomize_bn(create_model("cnn-small", widths=(4, 8), convs_per_stage=1, mean=[0.4], std=[0.3])).eval()
    folded = fold_for_analysis(model)
    report = analyze(model, torch.rand(1, 1, 8, 8))
    for row in report.rows:
        assert row.norm_inf == pytest.approx(metrics.operator_norm(folded.get_submodule(row.name), "inf"), rel=1e-9)
        assert row.frobenius == pytest.approx(float(folded.get_submodule(row.name).weight.double().norm()), rel=1e-9)


def test_chain_bounds_follow_their_definitions():
    model = create_model("fcn", width=16, depth=3)  # identity normalization: raw weights
    x = torch.rand(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    report = analyze(model, data=(x, y), delta=0.1)
    layers = [model.features[1], model.features[3], model.features[5]]
    for p in ("2", "inf"):
        bound = report.bounds[p]
        naive = math.prod(metrics.operator_norm(m, p) for m in layers)
        assert bound.naive == pytest.approx(naive, rel=1e-9)
        assert bound.head_norm == pytest.approx(metrics.operator_norm(model.head, p), rel=1e-9)
        # a 10-class softmax cross-entropy head: ||softmax - e_y||_1 <= 2 gives 2 (l-inf), sqrt(2) (l2)
        factor = 2.0 if p == "inf" else math.sqrt(2.0)
        assert bound.head_loss == "softmax" and bound.gap_factor == pytest.approx(factor)
        assert bound.gap == pytest.approx(factor * 0.1 * naive * bound.head_norm, rel=1e-9)
        assert bound.aligned is not None and bound.aligned <= bound.naive * (1 + 1e-12)
        assert "data masks" in bound.aligned_kind
    assert report.alignment_mode == "data" and report.n_samples == 64
    for row in report.rows[:-1]:
        for p in ("2", "inf"):
            assert 0 < row.alignment[p] <= 1


def test_residual_models_get_per_layer_metrics_and_no_bound_with_a_reason():
    model = create_model("resnet18-cifar", width=4)
    report = analyze(model, torch.rand(1, 3, 32, 32), norms=("2",))
    assert not report.is_chain
    assert report.bounds["2"].naive is None and "residual" in report.bounds["2"].reason
    assert "residual" in str(report)
    # consecutive pairs inside blocks still get an alignment
    assert report.row("layer1.0.conv1").next_layers == ("layer1.0.conv2",)
    assert 0 < report.row("layer1.0.conv1").alignment["2"] <= 1


def test_operator_conv_norm_is_reported_and_used_in_the_bound():
    model = create_model("cnn-small", widths=(4, 8), convs_per_stage=1)
    report = analyze(model, torch.rand(1, 1, 8, 8), conv_norm="operator", norms=("2",))
    conv = report.row("features.0")
    expected = metrics.operator_norm(fold_for_analysis(model).features[0], "2", conv.input_shape, mode="operator")
    assert conv.norm_2_operator == pytest.approx(expected, rel=1e-6)
    assert report.bounds["2"].layer_norms[0] == pytest.approx(conv.norm_2_operator)
    assert "operator" in str(report)
    # matricized mode keeps the l2 bound valid with the overlap factor
    matricized = analyze(model, torch.rand(1, 1, 8, 8), norms=("2",))
    assert matricized.bounds["2"].naive >= report.bounds["2"].naive * (1 - 1e-6)


def test_analyze_leaves_the_model_unchanged():
    model = _randomize_bn(create_model("cnn-small", widths=(4, 8), convs_per_stage=1, mean=[0.4], std=[0.3]))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, data=(torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))), delta=0.05)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_labelled_data_adds_audit_clean_accuracy_and_certified_fraction(trained_fcn):
    model, (x, y) = trained_fcn
    report = analyze(model, data=(x, y), delta={"2": 0.05, "inf": 0.01}, max_samples=200)
    assert report.n_samples == 200 and report.audit is not None
    assert report.clean_accuracy > 0.8
    for p in ("2", "inf"):
        audit = report.audit[p]
        assert audit.clean_accuracy == pytest.approx(report.clean_accuracy)
        assert 0 <= audit.accuracy <= min(audit.accuracy_plus, audit.accuracy_minus)
        assert report.bounds[p].certified_fraction is not None
    unlabelled = analyze(model, data=x[:32])
    assert unlabelled.audit is None and "labelled" in unlabelled.audit_reason


def test_certified_fraction_never_exceeds_pgd_accuracy(trained_fcn):
    model, (x, y) = trained_fcn
    x, y = x[:200], y[:200]
    seen_nonzero = False
    for p, norm, deltas in (("2", "L2", (0.02, 0.1, 0.3)), ("inf", "Linf", (0.002, 0.01, 0.05))):
        for delta in deltas:
            report = analyze(model, data=(x, y), norms=(p,), delta=delta)
            certified = report.bounds[p].certified_fraction
            x_adv = pgd(model, x, y, eps=delta, norm=norm, steps=50)
            with torch.no_grad():
                robust = float((model(x_adv).argmax(1) == y).double().mean())
            assert certified <= robust
            seen_nonzero |= certified > 0
    assert seen_nonzero  # the check is not vacuous


def test_example_inputs_are_inferred_from_the_model_spec():
    model = create_model("fcn", width=8)
    assert len(analyze(model).rows) == 3


def test_example_inputs_are_inferred_from_a_first_linear_layer():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))  # not built by create_model
    report = analyze(model)
    assert [r.input_shape for r in report.rows] == [(6,), (5,)] and report.is_chain


# --------------------------------------------------------------------------- errors


def test_model_without_prunable_layer_is_refused():
    with pytest.raises(ModelNotSupportedError, match="no prunable layer"):
        analyze(nn.Sequential(nn.Flatten(), nn.ReLU()), torch.rand(1, 4))


def test_example_inputs_of_the_wrong_shape_are_refused():
    model = create_model("cnn-small", widths=(4,), convs_per_stage=1)
    with pytest.raises(InvalidArgumentError, match=r"shape \(1, 3, 8, 8\)"):
        analyze(model, torch.rand(1, 3, 8, 8))
    with pytest.raises(InvalidArgumentError, match="batch"):
        analyze(model, torch.rand(1, 8, 8)[0])


@pytest.mark.parametrize(
    "kwargs",
    [{"eps": 0.0}, {"eps": 1.0}, {"norms": ("1",)}, {"conv_norm": "exact"}, {"delta": -1.0}, {"max_samples": 0}],
)
def test_bad_arguments_raise_robustprune_errors(kwargs):
    with pytest.raises(RobustPruneError):
        analyze(create_model("fcn", width=8), torch.rand(1, 1, 8, 8), **kwargs)


def test_all_zero_layers_are_reported_not_refused():
    model = create_model("fcn", width=8, depth=3)
    with torch.no_grad():
        model.features[3].weight.zero_()  # e.g. a zero-initialized BatchNorm folded in
    report = analyze(model, torch.rand(1, 1, 8, 8))
    row = report.row("features.3")
    assert row.spectral is None and row.neuron is None and row.frobenius == 0.0
    assert "features.3" in " ".join(report.notes) and "features.3" in str(report)
    json.dumps(report.to_dict())


def test_non_finite_weights_are_named():
    model = create_model("fcn", width=8)
    with torch.no_grad():
        model.features[3].weight[0, 0] = float("inf")
    with pytest.raises(InvalidArgumentError, match="features.3"):
        analyze(model, torch.rand(1, 1, 8, 8))
