"""Fast defaults: the CPU thread rule (CLI and recipes, recorded in the rows), the latency
measured with the chosen threads and recorded, DataLoader workers 0 for in-memory data."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from robustprune import _threads
from robustprune.cli import main
from robustprune.data import create_loaders, default_num_workers
from robustprune.errors import InvalidArgumentError
from robustprune.evaluation import evaluate, measure_latency
from robustprune.recipe import load_recipe, run_recipe

TINY = Path(__file__).parent.parent / "recipes" / "digits-tiny.toml"


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_default_threads_is_half_the_cpus_at_most_four(monkeypatch, cpus, threads):
    monkeypatch.setattr(_threads, "available_cpus", lambda: cpus)
    assert _threads.default_threads() == threads
    assert _threads.resolve_threads(None, None) == threads
    assert _threads.resolve_threads(None, 3) == 3 and _threads.resolve_threads(2, 3) == 2


def test_bad_thread_counts_are_refused():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="threads"):
            _threads.resolve_threads(bad)


def test_cli_applies_the_default_and_threads_overrides_it(monkeypatch):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 6)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["list", "datasets"]) == 0
    assert torch.get_num_threads() == 3  # the default rule, not PyTorch's one-per-core
    torch.set_num_threads(1)


def _checkpoint(tmp_path: Path) -> Path:
    from robustprune.checkpoint import save_pruned
    from robustprune.models import create_model

    model = create_model("cnn-small", num_classes=10, input_shape=(1, 8, 8), widths=[4, 8])
    path = tmp_path / "m.pt"
    save_pruned(model, path, meta={"data": {"name": "digits", "options": {}}})
    return path


def test_cli_eval_records_the_latency_threads(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["eval", "--checkpoint", str(_checkpoint(tmp_path)), "--threads", "1", "--format", "json",
                     "--n-examples", "16"])
    assert code == 0
    result = json.loads(out.getvalue())
    assert result["latency_threads"] == 1 and set(result["latency_ms"]) == {"batch1", "batch64"}


class _Threads(torch.nn.Module):
    """Records torch's thread count at every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return self.fc(x.flatten(1))


def test_latency_runs_with_the_given_threads_and_restores_them():
    model = _Threads()
    torch.set_num_threads(2)
    measure_latency(model, (4,), torch.device("cpu"), batches=(1,), warmup=1, runs=2, threads=1)
    assert model.seen == [1, 1, 1, 1] and torch.get_num_threads() == 2  # the shape check, a warm-up, two runs
    torch.set_num_threads(1)
    x, y = torch.rand(8, 4), torch.zeros(8, dtype=torch.long)
    result = evaluate(model, (x, y), device="cpu", example_inputs=x[:1])
    assert result.latency_threads == 1 and result.to_dict()["latency_threads"] == 1
    assert "(1 CPU thread)" in str(result)
    assert evaluate(model, (x, y), device="cpu", example_inputs=x[:1], latency=False).latency_threads is None


class _Files(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.zeros(1, 8, 8), 0


def test_num_workers_default_is_zero_in_memory_and_bounded_otherwise(monkeypatch):
    loaders = create_loaders("digits")
    assert loaders.train.num_workers == 0 and loaders.test.num_workers == 0
    assert create_loaders("synthetic", n_train=8, n_test=8).train.num_workers == 0
    assert default_num_workers(Subset(TensorDataset(torch.zeros(2)), [0])) == 0
    import robustprune.data as data

    for cpus, workers in ((1, 0), (2, 1), (8, 4), (64, 4)):
        monkeypatch.setattr(data, "available_cpus", lambda cpus=cpus: cpus)
        assert default_num_workers(_Files()) == workers
    explicit = create_loaders("digits", num_workers=1)
    assert explicit.train.num_workers == 1 and explicit.train.persistent_workers


def test_recipe_threads_are_used_and_recorded_and_the_argument_wins(tmp_path):
    sets = ["seeds=[0]", "prune=[]", "train.epochs=1", "eval.n_examples=8", "eval.n_iter=1", "threads=2"]
    recipe = load_recipe(TINY, sets)
    assert recipe.threads == 2 and "threads = 2" in recipe.to_toml()
    result = run_recipe(recipe, run_dir=tmp_path / "a", progress=False)
    assert [r["threads"] for r in result.rows] == [2] and torch.get_num_threads() == 2
    result = run_recipe(recipe, run_dir=tmp_path / "b", progress=False, threads=1)
    assert [r["threads"] for r in result.rows] == [1] and torch.get_num_threads() == 1
    with pytest.raises(Exception, match="threads"):
        load_recipe(TINY, ["threads=0"])
