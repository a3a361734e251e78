"""GPU-friendly defaults, exercised on CPU: CUDA width rounding (the device check
monkeypatched), the latency measurement's batches and formats, and the GPU throughput
flags of fit and the attack loop."""

from __future__ import annotations

import pytest
import torch

from robustprune import evaluation
from robustprune.models import create_model
from robustprune.pruners import EpsilonPruner, FixedRatioPruner, channel


def _as_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel, "on_cuda", lambda model: True)


def test_cuda_models_keep_widths_a_multiple_of_8_and_the_report_says_so(monkeypatch):
    model = create_model("cnn-small", widths=(24, 40, 64))
    cpu_report = EpsilonPruner(eps=0.5)(create_model("cnn-small", widths=(24, 40, 64)))
    assert any(r.kept % 8 for r in cpu_report.rows)  # without rounding some widths are odd
    assert "CUDA default" not in str(cpu_report)
    _as_cuda(monkeypatch)
    report = EpsilonPruner(eps=0.5)(model)
    assert all(r.kept % 8 == 0 or r.kept == r.total for r in report.rows)
    assert report.setting["round_to"] == 8
    assert "round_to=8 (CUDA default)" in str(report)


def test_explicit_round_to_wins_over_the_cuda_default(monkeypatch):
    _as_cuda(monkeypatch)
    report = FixedRatioPruner(ratio=0.37, round_to=1)(create_model("cnn-small", widths=(24, 40, 64)))
    assert report.setting["round_to"] == 1 and "CUDA default" not in str(report)
    assert any(r.kept % 8 for r in report.rows)
    report = FixedRatioPruner(ratio=0.37, round_to=4)(create_model("cnn-small", widths=(24, 40, 64)))
    assert all(r.kept % 4 == 0 or r.kept == r.total for r in report.rows)
    assert report.setting["round_to"] == 4


def test_tensor_core_multiple_by_dtype():
    assert channel.cuda_round_to(torch.bfloat16) == 8 and channel.cuda_round_to(torch.float32) == 8
    assert channel.cuda_round_to(torch.int8) == 16
    assert channel.default_round_to(create_model("fcn")) is None  # a CPU model: no rounding


def test_latency_runs_realistic_batches_and_channels_last():
    model = create_model("cnn-small", widths=(4, 4, 8)).train()
    out = evaluation.measure_latency(model, (1, 8, 8), torch.device("cpu"), batches=(1, 64, 256),
                                     warmup=1, runs=2, channels_last=True)
    assert set(out) == {"batch1", "batch64", "batch256"} and all(v > 0 for v in out.values())
    assert model.training  # mode put back
    assert all(p.is_contiguous() for p in model.parameters())  # format put back
    assert evaluation.latency_batches(torch.device("cuda")) == (1, 64, 256)
    assert evaluation.latency_batches(torch.device("cpu")) == (1, 64)


# --------------------------------------------------------------------------- fit and attack flags

from robustprune.errors import InvalidArgumentError  # noqa: E402
from robustprune.train import FitConfig, fit  # noqa: E402
from robustprune.train import config as train_config  # noqa: E402


def _tiny_run(**flags):
    torch.manual_seed(0)
    model = create_model("cnn-small", widths=(4, 4, 8))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    result = fit(model, (loader, None), epochs=1, lr=0.05, scheduler=None, device="cpu", progress=False, **flags)
    return result, model


def test_channels_last_fit_gives_the_default_losses():
    plain, m1 = _tiny_run()
    cl, m2 = _tiny_run(channels_last=True)
    assert cl.history[0].loss == pytest.approx(plain.history[0].loss, rel=1e-5)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_compile_is_validated_and_wired(monkeypatch):
    with pytest.raises(InvalidArgumentError, match="torch.compile mode"):
        FitConfig(epochs=1, compile="fastest")
    assert train_config.compile_mode(FitConfig(epochs=1)) is None
    assert train_config.compile_mode(FitConfig(epochs=1, compile=True)) == "default"
    assert train_config.compile_mode(FitConfig(epochs=1, compile="max-autotune-no-cudagraphs")) == (
        "max-autotune-no-cudagraphs"
    )
    seen = []

    def fake_compile(module, mode=None):
        seen.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled, _ = _tiny_run(compile="max-autotune-no-cudagraphs")
    plain, _ = _tiny_run()
    assert seen == ["max-autotune-no-cudagraphs"]
    assert compiled.history[0].loss == pytest.approx(plain.history[0].loss, rel=1e-6)


def test_cuda_graphs_on_cpu_is_refused_clearly():
    model = create_model("cnn-small", widths=(4, 4, 8))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(InvalidArgumentError, match="cuda_graphs=True needs a CUDA device"):
        fit(model, ([(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))], None), epochs=1, device="cpu",
            cuda_graphs=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(InvalidArgumentError, match="reduce-overhead"):
        FitConfig(epochs=1, cuda_graphs=True, compile="max-autotune-no-cudagraphs")


def _bench_gpu():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("bench_gpu")


def test_bench_gpu_peak_table_and_refusal_without_cuda(monkeypatch):
    bench = _bench_gpu()
    assert bench.peak_tflops("NVIDIA H200")[0] == 989.0 and bench.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert bench.peak_tflops("Tesla T4") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        bench.main(["--device", "cuda"])


class _Counting(torch.nn.Module):
    """What a monkeypatched torch.compile returns: the module, its calls counted."""

    def __init__(self, module, mode):
        super().__init__()
        self.module, self.mode, self.calls = module, mode, 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


def test_compiled_fit_sends_the_training_attack_through_the_compiled_model(monkeypatch):
    adv = {"kind": "pgd", "eps": 0.1, "steps": 3}
    plain, _ = _tiny_run(adversarial=adv)
    made = []

    def fake_compile(module, mode=None):
        made.append(_Counting(module, mode))
        return made[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled, _ = _tiny_run(adversarial=adv, compile=True)
    attacker, forward = made  # the attack's model (no DDP wrapper) first, then the training forward
    assert attacker.mode == forward.mode == "default"
    assert attacker.calls >= 2 * 3 and forward.calls >= 2  # 2 batches x 3 PGD steps, 2 forwards
    assert compiled.history[0].loss == pytest.approx(plain.history[0].loss, rel=1e-6)


# --------------------------------------------------------------------------- the robust evaluation's path

from robustprune.attacks import robust_accuracy  # noqa: E402
from robustprune.recipe.sections import EvalConfig  # noqa: E402


def _eval_data():
    torch.manual_seed(0)
    model = create_model("cnn-small", widths=(4, 4, 8))
    g = torch.Generator().manual_seed(2)
    return model, (torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g))


def test_channels_last_evaluation_matches_eager_and_puts_the_weights_back():
    model, data = _eval_data()
    before = [p.clone() for p in model.parameters()]
    eager = robust_accuracy(model, data, eps=0.1, n_iter=5, batch_size=12, device="cpu", progress=False)
    fast = robust_accuracy(model, data, eps=0.1, n_iter=5, batch_size=12, device="cpu", progress=False,
                           channels_last=True)
    assert eager.forward == "eager" and fast.forward == "eager, channels-last"
    assert fast.clean_accuracy == eager.clean_accuracy
    assert abs(fast.robust_accuracy - eager.robust_accuracy) <= 1 / 24  # a boundary point may flip
    assert all(p.is_contiguous() and torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_compiled_evaluation_attacks_through_the_compiled_model(monkeypatch):
    model, data = _eval_data()
    eager = robust_accuracy(model, data, eps=0.1, n_iter=5, batch_size=12, device="cpu", progress=False)
    made = []

    def fake_compile(module, mode=None):
        made.append(_Counting(module, mode))
        return made[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = robust_accuracy(model, data, eps=0.1, n_iter=5, batch_size=12, device="cpu", progress=False,
                             compile="max-autotune-no-cudagraphs")
    assert len(made) == 1 and made[0].mode == "max-autotune-no-cudagraphs" and made[0].calls > 10
    assert result.forward == "compiled (max-autotune-no-cudagraphs)"
    assert result.robust_accuracy == eager.robust_accuracy  # the same module underneath


def test_evaluation_speed_flags_are_refused_before_anything_runs():
    model, data = _eval_data()
    with pytest.raises(InvalidArgumentError, match="cuda_graphs=True needs a CUDA device"):
        robust_accuracy(model, data, eps=0.1, device="cpu", cuda_graphs=True)
    with pytest.raises(InvalidArgumentError, match="cuda_graphs=True needs a CUDA device"):
        evaluation.evaluate(model, data, eps=0.1, device="cpu", cuda_graphs=True, latency=False)
    with pytest.raises(InvalidArgumentError, match="torch.compile mode"):
        evaluation.evaluate(model, data, eps=0.1, device="cpu", compile="turbo")
    with pytest.raises(InvalidArgumentError, match="channels_last must be True or False"):
        EvalConfig(eps=0.1, channels_last="yes")
    assert EvalConfig(eps=0.1, compile="reduce-overhead").compile == "reduce-overhead"


def test_bench_gpu_dry_run_reports_every_workload_dense_and_pruned(tmp_path):
    bench = _bench_gpu()
    bench.main(["--dry-run", "--out", str(tmp_path)])
    text = (tmp_path / "gpu.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert "% of measured ceiling" in header and "speedup vs dense" in header
    workloads = {(r[0], r[2]) for r in body}
    assert {w for w, _ in workloads} == {"standard training", "PGD-2 training", "APGD-CE, 5 it"}
    for w, path in workloads:  # every workload and path, dense and pruned
        models = [r[1] for r in body if (r[0], r[2]) == (w, path)]
        assert models == ["dense", "ε-pruned 50%"], (w, path)
    assert ("PGD-2 training", "bf16, channels-last, compiled") in workloads
    for r in body:
        assert float(r[3].replace(",", "")) > 0 and r[5].endswith("%")
        assert (r[7] == "–") == (r[1] == "dense")
    assert "(50%)" in text and "batch 256" in text
