"""The soundness bullets of issue 12, one deterministic test each: the softmax gap bound's
factor, the fold check in analyze, the padded first conv measured on the real map, the
alignment ceiling across an overlapping max-pool, data-mode values labelled estimates, and
Normalize's per-feature statistics on flat inputs."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustprune.analysis import analyze
from robustprune.layers import Normalize, fold_for_analysis
from robustprune.metrics import gap_bound, gap_factor, head_loss

# the module, not the function that robustprune.analysis exports under the same name
analyze_module = importlib.import_module("robustprune.analysis.analyze")


def _two_class_line() -> nn.Sequential:
    """x -> x - 5 -> logits (x - 5, 5 - x): a 2-class softmax head ``C = [[1], [-1]]`` on a
    1-Lipschitz encoder, with class 0 far from predicted, so ``||softmax - e_0||_1`` is
    close to 2."""
    enc, head = nn.Linear(1, 1), nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        enc.weight.fill_(1.0)
        enc.bias.fill_(-5.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return nn.Sequential(enc, head).eval()


@pytest.mark.parametrize("p", ["2", "inf"])
def test_softmax_gap_bound_holds_where_the_factor_one_bound_fails(p):
    model, delta = _two_class_line(), 0.1
    report = analyze(model, example_inputs=torch.rand(1, 1), norms=(p,), delta=delta)
    bound = report.bounds[p]
    assert bound.head_loss == "softmax" and bound.gap_factor == pytest.approx(2.0 if p == "inf" else math.sqrt(2))
    x, y = torch.full((1, 1), 0.5), torch.zeros(1, dtype=torch.long)
    gap = float(F.cross_entropy(model(x - delta), y) - F.cross_entropy(model(x), y))
    factor_one = delta * bound.naive * bound.head_norm  # the paper's binary-head bound
    assert gap > factor_one * 1.3  # it is not a theorem for a softmax head ...
    assert gap <= bound.gap  # ... the reported bound is
    assert "softmax" in str(report) and "softmax" in report.to_markdown()
    assert "softmax" in report.to_dict()["bounds"][p]["kinds"]["gap"]


def test_gap_factor_follows_the_head():
    assert head_loss(1) == "logistic" and head_loss(2) == head_loss(10) == "softmax"
    assert gap_factor("logistic", "inf") == gap_factor("logistic", "2") == 1.0
    assert gap_factor("softmax", "inf") == 2.0 and gap_factor("softmax", "2") == pytest.approx(math.sqrt(2))
    assert gap_bound(0.1, 2.0, 3.0) == pytest.approx(0.6)  # the default: Corollary 3.3
    assert gap_bound(0.1, 2.0, 3.0, head="softmax", p="inf") == pytest.approx(1.2)


def test_a_one_logit_head_gets_the_logistic_bound():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    bound = analyze(model, example_inputs=torch.rand(1, 4), delta=0.1).bounds["inf"]
    assert bound.head_loss == "logistic" and bound.gap_factor == 1.0
    assert bound.gap == pytest.approx(0.1 * bound.naive * bound.head_norm)


def test_analyze_checks_the_folded_copy_and_falls_back_to_the_raw_weights(monkeypatch):
    model = nn.Sequential(Normalize([0.5], [0.25]), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    real_fold = fold_for_analysis

    def wrong_fold(m: nn.Module) -> nn.Module:
        folded = real_fold(m)
        with torch.no_grad():
            folded[1].weight.mul_(0.5)  # another function
        return folded

    monkeypatch.setattr(analyze_module, "fold_for_analysis", wrong_fold)
    report = analyze(model, example_inputs=torch.rand(2, 4))
    assert any("does not compute the model's function" in n for n in report.notes)
    # the raw weights, with the Normalize's 1/std as an op: still an upper bound
    raw = torch.linalg.matrix_norm(model[1].weight.double(), ord=2) / 0.25
    assert report.bounds["2"].naive == pytest.approx(float(raw), rel=1e-6)
    monkeypatch.setattr(analyze_module, "fold_for_analysis", real_fold)
    assert not any("does not compute" in n for n in analyze(model, example_inputs=torch.rand(2, 4)).notes)


def test_a_padded_first_conv_is_measured_on_the_real_map():
    """The issue's case: a 3x3 conv with padding 1 after a Normalize, on 3x12x12 inputs:
    the reported operator norm is that of the zero-padded conv at 12x12 (the map's linear
    part), not of the unpadded conv at 14x14."""
    torch.manual_seed(0)
    std = torch.tensor([0.2, 0.3, 0.4])
    model = nn.Sequential(Normalize([0.4, 0.5, 0.6], std.tolist()), nn.Conv2d(3, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10)).eval()
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(fold_for_analysis(model)(x), model(x), rtol=1e-5, atol=1e-5)
    row = analyze(model, example_inputs=x, conv_norm="operator").row("1")
    weight = model[1].weight.detach().double() / std.double().view(1, -1, 1, 1)
    dense = torch.autograd.functional.jacobian(
        lambda v: F.conv2d(v.view(1, 3, 12, 12), weight, padding=1).flatten(), torch.zeros(3 * 144, dtype=torch.double)
    )
    unpadded = torch.autograd.functional.jacobian(
        lambda v: F.conv2d(v.view(1, 3, 14, 14), weight).flatten(), torch.zeros(3 * 196, dtype=torch.double)
    )
    exact = float(torch.linalg.matrix_norm(dense, ord=2))
    assert row.norm_2_operator == pytest.approx(exact, rel=1e-3)
    assert exact <= float(torch.linalg.matrix_norm(unpadded, ord=2))


@pytest.mark.parametrize("kernel,stride,ceiling", [(3, 1, "3"), (3, 2, "2")])
def test_alignment_across_an_overlapping_max_pool_is_noted(kernel, stride, ceiling):
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel, stride),
                          nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    x = torch.rand(2, 1, 10, 10)
    model(x)
    report = analyze(model, example_inputs=x, norms=("2",))
    notes = [n for n in report.notes if "may exceed 1" in n]
    assert len(notes) == 1 and "0->3 l2" in notes[0] and f"c={ceiling}" in notes[0]


def test_no_alignment_note_across_a_non_overlapping_max_pool():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 9, 4))
    report = analyze(model, example_inputs=torch.rand(2, 1, 10, 10))
    assert not any("may exceed 1" in n for n in report.notes)


def test_data_mode_aligned_values_are_labelled_estimates_everywhere():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(32, 6)
    report = analyze(model, data=(x, model(x).argmax(1)))
    assert report.alignment_mode == "data"
    text, markdown, kinds = str(report), report.to_markdown(), report.to_dict()["bounds"]["2"]["kinds"]
    assert "not a bound" in text and "estimate" in markdown and "not bounds" in markdown
    assert "not a bound" in kinds["aligned"] and "not a bound" in kinds["gap_aligned"]
    assert kinds["naive"].startswith("upper bound") and kinds["certified_fraction"].startswith("certificate")


def test_normalize_uses_per_feature_statistics_on_flat_inputs():
    norm = Normalize([0.1, 0.5], [0.2, 0.4])
    image = torch.rand(3, 2, 2, 2)
    assert torch.allclose(norm(image.flatten(1)), norm(image).flatten(1))
    assert torch.allclose(norm(image[:, :, 0, 0]), (image[:, :, 0, 0] - torch.tensor([0.1, 0.5])) / torch.tensor([0.2, 0.4]))
    sequence = torch.rand(3, 2, 5)  # (N, C, L): per channel
    assert torch.allclose(norm(sequence), (sequence - torch.tensor([0.1, 0.5]).view(1, 2, 1)) / torch.tensor([0.2, 0.4]).view(1, 2, 1))
