"""evaluate: clean and robust accuracy, MACs, params and latency in one call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustprune.errors import InvalidArgumentError
from robustprune.evaluation import EvalResult, evaluate
from robustprune.models import create_model
from robustprune.train import fit


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    net = create_model("cnn-small", widths=(8, 16), mean=digits.info.mean, std=digits.info.std)
    fit(net, digits, 3, lr=0.05, progress=False)
    return net


def test_evaluate_reports_clean_robust_macs_params_and_latency(model, digits):
    import torch_pruning as tp

    result = evaluate(model, digits.test, eps=0.1, n_examples=64, n_iter=10, progress=False)
    assert isinstance(result, EvalResult)
    assert result.n == 360 and 0.7 < result.clean_accuracy <= 1.0
    assert result.robust is not None and result.robust.n == 64
    assert result.robust_accuracy == result.robust.robust_accuracy
    assert result.robust_accuracy <= result.robust.clean_accuracy
    assert result.robust.eps == 0.1 and result.robust.norm == "Linf"
    macs, params = tp.utils.count_ops_and_params(model, torch.rand(1, 1, 8, 8))
    assert (result.macs, result.params) == (int(macs), int(params))
    assert result.params == sum(p.numel() for p in model.parameters())
    assert set(result.latency_ms) == {"batch1", "batch64"}
    assert all(v > 0 for v in result.latency_ms.values())
    d = result.to_dict()
    assert d["robust"]["n"] == 64 and d["latency_ms"] == result.latency_ms
    assert "robust" in str(result)


def test_without_eps_there_is_no_robust_accuracy_and_latency_is_optional(model, digits):
    result = evaluate(model, digits.test, latency=False, progress=False)
    assert result.robust is None and result.robust_accuracy is None
    assert result.latency_ms == {}


def test_robust_accuracy_on_all_examples_never_exceeds_clean_accuracy(model, digits):
    result = evaluate(model, digits.test, eps=0.05, n_iter=5, latency=False, progress=False)
    assert result.robust.n == result.n
    assert result.robust.clean_accuracy == pytest.approx(result.clean_accuracy)
    assert result.robust_accuracy <= result.clean_accuracy


def test_smaller_models_have_fewer_macs_and_params(digits):
    x = torch.rand(1, 1, 8, 8)
    small = evaluate(create_model("fcn", width=16), (x, torch.zeros(1, dtype=torch.long)),
                     latency=False, progress=False)
    large = evaluate(create_model("fcn", width=64), (x, torch.zeros(1, dtype=torch.long)),
                     latency=False, progress=False)
    assert small.macs < large.macs and small.params < large.params


def test_evaluate_restores_model_mode_and_accepts_example_inputs(model, digits):
    model.train()
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # no recorded input shape
    result = evaluate(plain, digits.test, example_inputs=torch.rand(4, 1, 8, 8), latency=False,
                      progress=False)
    assert result.params == 650
    evaluate(model, digits.test, latency=False, progress=False)
    assert model.training
    model.eval()


def test_bad_evaluate_arguments_raise_clear_errors(model, digits):
    with pytest.raises(InvalidArgumentError):
        evaluate(model, digits.test, batch_size=0, progress=False)
    with pytest.raises(InvalidArgumentError):
        evaluate(model, digits.test, example_inputs=torch.rand(64), progress=False)
    with pytest.raises(InvalidArgumentError):
        evaluate(model, digits.test, eps=0.1, attacks=("nope",), latency=False, progress=False)


def test_rp_evaluate_is_callable_whatever_the_import_order(digits):
    import robustprune as rp
    import robustprune.evaluation  # noqa: F401  the module has its own name: rp.evaluate stays the function

    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    result = rp.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), (x, y), latency=False,
                         progress=False)
    assert isinstance(result, EvalResult) and result.n == 4
