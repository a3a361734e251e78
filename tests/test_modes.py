"""Every call that runs a caller's model in eval mode for a while puts each module's own
train/eval mode back afterwards, on success and on refusal: a model in train mode with a
frozen (eval-mode) BatchNorm keeps it frozen. ``model.train(was_training)`` would not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import robustprune as rp
from robustprune.attacks import robust_accuracy
from robustprune.evaluation import count_macs_params, measure_latency
from robustprune.metrics import dominant_direction_audit, top_input_direction

G = torch.Generator().manual_seed(0)
X = torch.rand(16, 1, 8, 8, generator=G)
Y = torch.randint(0, 10, (16,), generator=G)

CALLS: dict[str, Callable[[nn.Module, Path], Any]] = {
    "analyze": lambda m, _: rp.analyze(m, example_inputs=X[:1]),
    "analyze-data": lambda m, _: rp.analyze(m, example_inputs=X[:1], data=(X, Y)),
    "evaluate": lambda m, _: rp.evaluate(m, (X, Y), eps=0.1, n_iter=2, progress=False),
    "robust_accuracy": lambda m, _: robust_accuracy(m, (X, Y), eps=0.1, n_iter=2, progress=False),
    "measure_latency": lambda m, _: measure_latency(m, (1, 8, 8), "cpu", batches=(1,), warmup=0, runs=1),
    "count_macs_params": lambda m, _: count_macs_params(m, X[:1]),
    "top_input_direction": lambda m, _: top_input_direction(m, (1, 8, 8)),
    "dominant_direction_audit": lambda m, _: dominant_direction_audit(m, X, Y, delta=0.05),
    "export": lambda m, tmp: rp.export(m, tmp / "m.pt2", example_inputs=X[:1]),
    "prune-refused": lambda m, _: rp.prune(m, target_macs=2.0, example_inputs=X[:1]),
    "analyze-refused": lambda m, _: rp.analyze(m, example_inputs=torch.rand(1, 3, 8, 8)),
}


def frozen_bn_model() -> nn.Module:
    torch.manual_seed(0)
    net = rp.create_model("cnn-small", widths=(4, 8))  # train mode
    next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d)).eval()
    return net


@pytest.mark.parametrize("name", list(CALLS))
def test_each_modules_mode_is_put_back(name: str, tmp_path: Path) -> None:
    net = frozen_bn_model()
    before = [(n, m.training) for n, m in net.named_modules()]
    assert any(not t for _, t in before) and net.training
    try:
        CALLS[name](net, tmp_path)
    except rp.RobustPruneError:
        assert name.endswith("-refused"), f"{name} was refused"
    else:
        assert not name.endswith("-refused"), f"{name} should have been refused"
    assert [(n, m.training) for n, m in net.named_modules()] == before
