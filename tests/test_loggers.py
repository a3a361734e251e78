"""fit(loggers=...) and a recipe's [log]: CSV always, TensorBoard through the [tensorboard]
extra; per epoch loss, accuracies, lr and the regularization terms; per job the final row."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from robustprune.errors import InvalidArgumentError, RecipeError
from robustprune.recipe import load_recipe, run_recipe
from robustprune.regularizers import BetaDispersion
from robustprune.train import CSVLogger, TensorBoardLogger, fit
from robustprune.train.loggers import LoggerError

TINY = Path(__file__).parent.parent / "recipes" / "digits-tiny.toml"


def _fit(tmp_path, loggers, **kw):
    from robustprune.data import create_loaders

    loaders = create_loaders("synthetic", batch_size=32, shape=(1, 8, 8), n_train=64, n_test=32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    return fit(model, loaders, epochs=2, lr=0.1, device="cpu", progress=False,
               regularizers=[BetaDispersion(0.01)], loggers=loggers, **kw)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_logger_writes_one_row_per_epoch_with_loss_accuracies_lr_and_terms(tmp_path):
    path = tmp_path / "log" / "fit.csv"
    result = _fit(tmp_path, [CSVLogger(path)])
    rows = _rows(path)
    assert [r["kind"] for r in rows] == ["epoch", "epoch"]
    for row, stats in zip(rows, result.history):
        assert int(row["epoch"]) == stats.epoch
        for key in ("loss", "regularization", "train_accuracy", "test_accuracy", "lr"):
            assert float(row[key]) == pytest.approx(getattr(stats, key))
        term = float(row["regularization_terms/BetaDispersion"])
        assert term == pytest.approx(stats.regularization_terms["BetaDispersion"]) and term > 0
        assert term == pytest.approx(stats.regularization)  # the only regularizer


def test_csv_logger_adds_the_result_row_with_new_columns(tmp_path):
    log = CSVLogger(tmp_path / "job.csv")
    _fit(tmp_path, [log])
    log.log_result({"id": "seed0/dense", "clean_accuracy": 0.5, "latency_ms": {"batch1": 0.1}, "history": [1, 2]})
    rows = _rows(tmp_path / "job.csv")
    assert [r["kind"] for r in rows] == ["epoch", "epoch", "result"]
    assert rows[2]["clean_accuracy"] == "0.5" and rows[2]["latency_ms/batch1"] == "0.1"
    assert rows[0]["clean_accuracy"] == "" and "history" not in rows[2]


def test_tensorboard_logger_writes_readable_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TensorBoardLogger(tmp_path / "tb")
    result = _fit(tmp_path, [log])
    log.log_result({"clean_accuracy": 0.25})
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = events.Scalars("epoch/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([s.loss for s in result.history])
    assert "epoch/regularization_terms/BetaDispersion" in events.Tags()["scalars"]
    assert events.Scalars("result/clean_accuracy")[0].value == pytest.approx(0.25)


def test_missing_tensorboard_extra_is_named(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(LoggerError, match=r"robustprune\[tensorboard\]"):
        TensorBoardLogger(tmp_path / "tb")
    with pytest.raises(RecipeError, match=r"log\.kind.*robustprune\[tensorboard\]"):
        load_recipe(TINY, ["log.kind=tensorboard"])
    assert not (tmp_path / "tb").exists()


def test_bad_loggers_are_refused_before_training(tmp_path):
    model = torch.nn.Linear(4, 2)
    before = [p.clone() for p in model.parameters()]
    loader = [(torch.rand(4, 4), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(InvalidArgumentError, match="not a logger"):
        fit(model, loader, epochs=1, device="cpu", loggers=[object()])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_log_kind_is_refused_up_front(tmp_path):
    with pytest.raises(RecipeError, match=r"log\.kind = \"xml\" is invalid; allowed values: 'none', 'csv', 'tensorboard'"):
        load_recipe(TINY, ["log.kind=xml"])


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_recipe_log_writes_per_job_files(tmp_path, kind):
    recipe = load_recipe(TINY, [
        "seeds=[0]", 'prune=[{method="epsilon",eps=[0.5]}]', "train.epochs=2", "eval.n_examples=8",
        "eval.n_iter=1", f"log.kind={kind}",
    ])
    assert f'kind = "{kind}"' in recipe.to_toml()
    result = run_recipe(recipe, run_dir=tmp_path / "run", progress=False)
    log_dir = result.run_dir / "log"
    if kind == "csv":
        dense = _rows(log_dir / "seed0__dense.csv")
        assert [r["kind"] for r in dense] == ["epoch", "epoch", "result"]
        pruned = _rows(log_dir / "seed0__epsilon__eps=0.5.csv")
        assert [r["kind"] for r in pruned] == ["epoch", "result"]  # the one finetune epoch, the row
        assert float(pruned[-1]["macs_kept"]) == pytest.approx(result.rows[1]["macs_kept"])
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(log_dir / "seed0__dense"))
        events.Reload()
        assert [e.step for e in events.Scalars("epoch/loss")] == [1, 2]
        assert events.Scalars("result/clean_accuracy")[0].value == pytest.approx(result.rows[0]["clean_accuracy"])
