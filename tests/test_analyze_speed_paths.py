"""The batched paths that make ``analyze`` cheap on narrow models give the values of the
one-at-a-time paths (to the alignment tolerance), and run_speed measures every width."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robustprune.metrics import ALIGNMENT_TOL, operator_norm
from robustprune.metrics.alignment import conv_operator_norms


def _convs(n: int, **kwargs) -> list[nn.Conv2d]:
    torch.manual_seed(0)
    return [nn.Conv2d(4, 6, 3, **kwargs) for _ in range(n)]


@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"stride": 2, "padding": 1}, {"padding": 1, "groups": 2}])
def test_batched_conv_norms_match_one_at_a_time(kwargs):
    convs = _convs(3, **kwargs)
    convs[1].weight.data *= 3.0  # distinct norms: the batch must not mix its operators
    batched = conv_operator_norms(convs, (4, 9, 9))
    single = [operator_norm(c, "2", (4, 9, 9), mode="operator", tol=ALIGNMENT_TOL) for c in convs]
    for b, s in zip(batched, single):
        assert b == pytest.approx(s, rel=2 * ALIGNMENT_TOL)
    assert batched[1] > 2 * batched[0]


def test_mixed_convs_fall_back_to_one_by_one_and_agree():
    convs = [nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular")]
    batched = conv_operator_norms(convs, (4, 8, 8))
    single = [operator_norm(c, "2", (4, 8, 8), mode="operator", tol=ALIGNMENT_TOL) for c in convs]
    assert batched == pytest.approx(single, rel=2 * ALIGNMENT_TOL)


def test_analyze_alignments_unchanged_by_the_batched_norms(monkeypatch):
    from robustprune.analysis import _pairs, analyze
    from robustprune.models import create_model

    model = create_model("resnet18-cifar", width=4).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fast = analyze(model, example_inputs=x)
    monkeypatch.setattr(_pairs.OperatorNorms, "prefetch", lambda self, names: None)
    slow = analyze(model, example_inputs=x)
    measured = 0
    for r, s in zip(fast.rows, slow.rows, strict=True):
        assert r.alignment.keys() == s.alignment.keys()
        for p, value in r.alignment.items():
            if value is not None:
                assert value == pytest.approx(s.alignment[p], rel=3 * ALIGNMENT_TOL)
                measured += 1
    assert measured


def test_run_speed_measures_analyze_at_every_resnet_width():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    run_speed = importlib.import_module("run_speed")
    widths = {kw.get("width") for name, kw in run_speed.FULL.analyze_narrow if name == "resnet18-cifar"}
    assert {8, 16, 32} <= widths
