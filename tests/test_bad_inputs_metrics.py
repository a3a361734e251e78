"""Bad inputs of the metric functions (robustprune.metrics): refused with a RobustPruneError
that names the argument, never a raw torch/Python error and never a plausible wrong number
(a negative Lipschitz constant certifying every point, a loose tolerance stopping a power
iteration after one step, a ConvTranspose2d matricized with its input channels as rows).

One case per line, ``Case(id, call(model), regex)``; the harness (tests/badinput.py) checks
that the model (here: a small fcn, or the layers the call measures) is unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
from badinput import Case, expect_refusal
from torch import nn

from robustprune import metrics as M
from robustprune.layers import matricize
from robustprune.models import create_model

G = torch.Generator().manual_seed(0)
X = torch.rand(4, 1, 8, 8, generator=G)
Y = torch.tensor([0, 1, 2, 3])
LOGITS = torch.randn(5, 3, generator=G)
LABELS = torch.tensor([0, 1, 2, 0, 1])
THETA = torch.tensor([3.0, 2.0, 1.0])
CONV = nn.Conv2d(2, 3, 3, padding=1)
LIN_A, LIN_B = nn.Linear(4, 5), nn.Linear(5, 3)
XA = torch.randn(6, 4, generator=G)


def cf(**kw):
    kw = {"delta": 0.1, "lipschitz": 1.0, "head_norm": 1.0, **kw}
    return lambda m: M.certified_fraction(kw.pop("logits", LOGITS), kw.pop("labels", LABELS), **kw)


def opn(**kw):
    kw = {"p": "2", "input_shape": (2, 6, 6), "mode": "operator", **kw}
    layer = kw.pop("layer", CONV)
    return lambda m: M.operator_norm(layer, **kw)


def al(**kw):
    kw = {"data": XA, **kw}
    a, b = kw.pop("a", LIN_A), kw.pop("b", LIN_B)
    return lambda m: M.alignment(a, b, **kw)


def dda(x=X, y=Y, **kw):
    kw.setdefault("delta", 0.1)
    return lambda m: M.dominant_direction_audit(kw.pop("model", m), x, y, **kw)


CASES = [
    # bounds: a negative or NaN constant would certify every point / return NaN
    Case("cf-lipschitz-neg", cf(lipschitz=-100.0), r"lipschitz must be a finite number >= 0"),
    Case("cf-lipschitz-nan", cf(lipschitz=math.nan), r"lipschitz must be a finite number >= 0"),
    Case("cf-head-norm-neg", cf(head_norm=-100.0), r"head_norm must be a finite number >= 0"),
    Case("cf-head-norm-str", cf(head_norm="x"), r"head_norm must be a number"),
    Case("cf-logits-nan", cf(logits=LOGITS * math.nan), r"logits contain NaN"),
    Case("gap-lipschitz-nan", lambda m: M.gap_bound(0.1, math.nan, 1.0), r"lipschitz must be a finite number"),
    Case("gap-lipschitz-neg", lambda m: M.gap_bound(0.1, -5.0, 1.0), r"lipschitz must be a finite number"),
    Case("gap-lipschitz-none", lambda m: M.gap_bound(0.1, None, 1.0), r"lipschitz must be a number"),
    Case("gap-head-norm-nan", lambda m: M.gap_bound(0.1, 1.0, math.nan), r"head_norm must be a finite number"),
    Case("gap-p-bogus", lambda m: M.gap_bound(0.1, 1.0, 1.0, p="bogus"), r"p must be '2' or 'inf'"),
    Case("gap-head-list", lambda m: M.gap_bound(0.1, 1.0, 1.0, head=["x"]), r"head must be one of"),
    Case("gap-factor-dict", lambda m: M.gap_factor({}), r"head must be one of"),
    Case("naive-empty", lambda m: M.naive_lipschitz_bound([]), r"layer norms must not be empty"),
    Case("naive-str", lambda m: M.naive_lipschitz_bound("123"), r"layer norms must be a list of numbers"),
    Case("naive-bool", lambda m: M.naive_lipschitz_bound([True, 2]), r"layer norms must be a number"),
    Case("naive-str-items", lambda m: M.naive_lipschitz_bound(["2", "3"]), r"layer norms must be a number"),
    Case("naive-none", lambda m: M.naive_lipschitz_bound(None), r"layer norms must be a list"),
    Case("naive-between-str", lambda m: M.naive_lipschitz_bound([2, 3], between="5"), r"between-layer .* list"),
    Case("aligned-empty", lambda m: M.aligned_lipschitz_bound([], []), r"must not be empty"),
    Case("aligned-str", lambda m: M.aligned_lipschitz_bound([2, 3], ["0.5"]), r"alignment of pair \(0, 1\) must be a number"),
    Case("aligned-bool", lambda m: M.aligned_lipschitz_bound([2, 3], [True]), r"must be a number"),
    Case("aligned-none", lambda m: M.aligned_lipschitz_bound([2, 3], None), r"alignments must be a list"),
    Case("head-loss-0", lambda m: M.head_loss(0), r"num_outputs must be >= 1"),
    Case("head-loss-float", lambda m: M.head_loss(1.7), r"num_outputs must be a whole number"),
    # logit margins: float/bool labels are not class indices
    Case("margins-float-labels", lambda m: M.logit_margins(LOGITS, LABELS.float() + 0.2), r"integer class indices"),
    Case("margins-bool-labels", lambda m: M.logit_margins(LOGITS, LABELS > 0), r"labels must be real numbers"),
    Case("margins-str", lambda m: M.logit_margins("abc", LABELS), r"logits must be a tensor"),
    Case("margins-none", lambda m: M.logit_margins(LOGITS, None), r"labels must be a tensor"),
    Case("margins-complex", lambda m: M.logit_margins(LOGITS.to(torch.complex64), LABELS), r"real numbers"),
    # norm names: only spellings of l2 and l-infinity
    Case("norm-lilnlf", lambda m: M.operator_norm(LIN_A, "lilnlf"), r"p must be '2' or 'inf'"),
    Case("norm-ll2", lambda m: M.operator_norm(LIN_A, "ll2"), r"p must be '2' or 'inf'"),
    Case("norm-bool", lambda m: M.operator_norm(LIN_A, True), r"p must be '2' or 'inf'"),
    # compressibility: theta and k
    Case("theta-none", lambda m: M.residual_curve(None), r"theta must be a tensor"),
    Case("theta-str", lambda m: M.residual_curve("abc"), r"theta must be a tensor"),
    Case("theta-ragged", lambda m: M.residual_curve([[1.0], [1.0, 2.0]]), r"theta must be a tensor"),
    Case("theta-meta", lambda m: M.residual_curve(torch.ones(3, device="meta")), r"meta device"),
    Case("k-float", lambda m: M.relative_residual(THETA, 2.5), r"k must be a whole number"),
    Case("k-str", lambda m: M.relative_residual(THETA, "2"), r"k must be a whole number"),
    Case("k-bool", lambda m: M.dispersion(THETA, True), r"k must be a whole number"),
    Case("k-nan", lambda m: M.structure_factor(THETA, math.nan), r"k must be a whole number"),
    Case("k-float-compressibility", lambda m: M.compressibility(THETA, k=2.9), r"k must be a whole number"),
    # operator norms: tolerance, iterations, shapes, layer types
    Case("tol-10", opn(tol=10), r"tol must be a relative tolerance in \(0, 1\)"),
    Case("tol-nan", opn(tol=math.nan), r"tol must be a relative tolerance"),
    Case("tol-neg", opn(tol=-1), r"tol must be a relative tolerance"),
    Case("tol-str", opn(tol="a"), r"tol must be a number"),
    Case("max-iter-0", opn(max_iter=0), r"max_iter must be >= 1"),
    Case("max-iter-bool", opn(max_iter=True), r"max_iter must be a whole number"),
    Case("max-iter-float", opn(max_iter=2.5), r"max_iter must be a whole number"),
    Case("shape-float", opn(input_shape=(2, 6.9, 6.9)), r"input_shape \(each size\) must be a whole number"),
    Case("shape-bool", opn(input_shape=(2, True, True)), r"input_shape \(each size\) must be a whole number"),
    Case("shape-str", opn(input_shape="abc"), r"input_shape must be the shape of one example"),
    Case("shape-int", opn(input_shape=5), r"input_shape must be the shape of one example"),
    Case("shape-nan", opn(input_shape=(2, math.nan, 6)), r"input_shape \(each size\)"),
    Case("kernel-larger-than-input", opn(layer=nn.Conv2d(2, 3, 5), input_shape=(2, 2, 2)), r"smaller than the conv's 5x5 kernel"),
    Case("conv-transpose", lambda m: M.operator_norm(nn.ConvTranspose2d(2, 5, 3), "inf"), r"ConvTranspose2d is not a Linear, Conv2d"),
    Case("conv1d", opn(layer=nn.Conv1d(2, 3, 3), input_shape=(2, 8)), r"Conv1d is not a Linear, Conv2d"),
    Case("embedding", lambda m: M.weight_matrix(nn.Embedding(4, 3)), r"Embedding is not a Linear, Conv2d"),
    Case("factor-conv1d", lambda m: M.conv_norm_bound_factor(nn.Conv1d(2, 3, 3)), r"Conv1d is not"),
    Case("factor-str", lambda m: M.conv_norm_bound_factor("abc"), r"str is not a Linear"),
    Case("matricize-empty", lambda m: matricize(torch.ones(0, 3)), r"empty"),
    Case("matricize-meta", lambda m: M.weight_matrix(torch.ones(2, 2, device="meta")), r"meta device"),
    # alignment
    Case("al-norms-nan", al(norms=(math.nan, 1.0)), r"norms\[0\] must be a finite number >= 0"),
    Case("al-norms-neg", al(norms=(-1.0, 1.0)), r"norms\[0\] must be a finite number >= 0"),
    Case("al-norms-one", al(norms=(1.0,)), r"norms must be the pair"),
    Case("al-norms-float", al(norms=1.0), r"norms must be the pair"),
    Case("al-data-nan", al(data=torch.full((6, 4), math.nan)), r"data contains NaN"),
    Case("al-data-shape", al(data=torch.randn(6, 7)), r"layer_a does not accept inputs of shape \(7,\)"),
    Case("al-max-samples-float", al(max_samples=2.5), r"max_samples must be a whole number"),
    Case("al-max-samples-none", al(max_samples=None), r"max_samples must be a whole number"),
    Case("al-layer-tensor", al(a=torch.ones(5, 4)), r"layer_a must be a Linear, Conv2d"),
    Case("al-through-int", al(through=5), r"through must be a callable"),
    Case("al-through-tuple", al(through=lambda z: (z, z)), r"through returned a tuple"),
    Case("al-tol", al(tol=5), r"tol must be a relative tolerance"),
    # the top input direction and the dominant-direction audit
    Case("tid-tol", lambda m: M.top_input_direction(m, (1, 8, 8), tol=100), r"tol must be a relative tolerance"),
    Case("tid-max-iter-0", lambda m: M.top_input_direction(m, (1, 8, 8), max_iter=0), r"max_iter must be >= 1"),
    Case("tid-shape-wrong", lambda m: M.top_input_direction(m, (1, 4, 4)), r"cannot run on inputs of shape \(1, 4, 4\)"),
    Case("tid-shape-str", lambda m: M.top_input_direction(m, "abc"), r"input_shape must be the shape"),
    Case("tid-shape-neg", lambda m: M.top_input_direction(m, (-1, 8, 8)), r"input_shape \(each size\) must be >= 1"),
    Case("tid-model-str", lambda m: M.top_input_direction("abc", (1, 8, 8)), r"needs a torch.nn.Module"),
    Case("dda-label-99", dda(y=torch.full((4,), 99)), r"a label is 99, but the model has 10 outputs"),
    Case("dda-label-neg", dda(y=torch.full((4,), -1)), r"a label is -1; labels are class indices >= 0"),
    Case("dda-label-float", dda(y=Y.float() + 0.5), r"labels are torch.float32; labels must be integer"),
    Case("dda-label-bool", dda(y=Y > 1), r"labels are torch.bool; labels must be integer"),
    Case("dda-x-nan", dda(x=X * math.nan), r"audit's data: .*NaN or infinite"),
    Case("dda-x-255", dda(x=X * 255), r"outside \[0, 1\].*divide 0..255 pixels by 255"),
    Case("dda-x-shape", dda(x=torch.rand(4, 3, 8, 8)), r"cannot run on x's examples of shape \(3, 8, 8\)"),
    Case("dda-one-logit", dda(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), y=torch.zeros(4, dtype=torch.long)),
         r"2 or more logits"),
    Case("dda-model-str", dda(model="abc"), r"needs a torch.nn.Module"),
    Case("dda-batch-size-0", dda(batch_size=0), r"batch_size must be >= 1"),
    Case("dda-batch-size-bool", dda(batch_size=True), r"batch_size must be a whole number"),
    Case("dda-seed-float", dda(seed=1.5), r"seed must be a whole number"),
]


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("fcn", width=8)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_metrics_refuse(case: Case, model: nn.Module) -> None:
    expect_refusal(case, model)


def test_the_measured_layers_are_unchanged_by_a_refusal() -> None:
    """The harness checks the fcn; the module-level layers the cases measure are checked here."""
    for layer in (CONV, LIN_A, LIN_B):
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        for case in CASES:
            try:
                case.call(create_model("fcn", width=8))
            except Exception:  # noqa: BLE001 (every case raises; test_metrics_refuse checks which)
                pass
        assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


def test_a_batchnorm_in_through_runs_in_eval_mode_and_keeps_its_statistics() -> None:
    bn = nn.BatchNorm1d(5)
    through = nn.Sequential(bn, nn.ReLU())
    value = M.alignment(LIN_A, LIN_B, data=XA, through=through)
    assert 0 < value <= 1 + 1e-9
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(5)) and bn.training


@pytest.mark.parametrize("q", [100.0, 2000.0, 1e5])
def test_the_residual_curve_of_a_large_q_does_not_underflow(q: float) -> None:
    """(2/3)^2000 underflows in float64; the curve must still be the definition's."""
    t = torch.tensor([3.0, 2.0, 1.0])
    expected = [float(torch.linalg.vector_norm(t[k:].double(), ord=math.inf)) / 3.0 for k in (1, 2)]
    curve = M.residual_curve(t, q)
    # ||theta_{>k}||_q -> max of the tail as q grows; within 1% at q = 100
    assert curve[0] == pytest.approx(expected[0], rel=1e-2) and curve[1] == pytest.approx(expected[1], rel=1e-2)
    assert float(curve[-1]) == 0.0 and M.k_for_eps(t, 0.5, q) == 2


def test_values_near_the_float64_maximum_are_measured() -> None:
    c = M.compressibility(torch.tensor([1e308, 1e308], dtype=torch.float64), k=1)
    assert c.eps == pytest.approx(math.sqrt(0.5)) and c.structure_factor == pytest.approx(math.sqrt(0.5))
    assert c.theta_norm == pytest.approx(math.sqrt(2) * 1e308)


def test_spellings_of_the_two_norms_are_still_accepted() -> None:
    for p in ("2", 2, 2.0, "l2", "L2"):
        assert M.operator_norm(LIN_A, p) == M.operator_norm(LIN_A, "2")
    for p in ("inf", "Linf", "linf", "∞", math.inf):
        assert M.operator_norm(LIN_A, p) == M.operator_norm(LIN_A, "inf")


@pytest.mark.parametrize("bad", ["abc", None, torch.ones(2), [1]])
def test_folding_refuses_what_is_not_a_module(bad) -> None:
    from robustprune.errors import InvalidArgumentError
    from robustprune.layers import fold_batchnorm, fold_for_analysis

    for fold in (fold_batchnorm, fold_for_analysis):
        with pytest.raises(InvalidArgumentError, match=f"{fold.__name__} needs a torch.nn.Module"):
            fold(bad)
