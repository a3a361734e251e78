"""The command line's model sources: ``--model NAME`` with ``--weights``, ``--num-classes``,
``--input-shape`` on prune/analyze/eval, ``run --weights`` (recipe ``model.weights``),
``list models 'timm:*'``, ``--device``, and analyze's dataset-given δ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robustprune as rp
from robustprune.cli import main
from robustprune.recipe import load_recipe, run_recipe

TINY = Path(__file__).parent.parent / "recipes" / "digits-tiny.toml"
CNN = ["--model", "cnn-small", "--model-option", "widths=[8,16]", "--model-option", "convs_per_stage=1"]


@pytest.fixture
def digits_weights(tmp_path):
    """A state_dict of cnn-small (widths 8, 16) for the digits (1x8x8, 10 classes)."""
    from robustprune.data import dataset_info

    info = dataset_info("digits")
    torch.manual_seed(3)
    model = rp.create_model("cnn-small", num_classes=10, input_shape=info.input_shape, mean=info.mean,
                            std=info.std, widths=[8, 16], convs_per_stage=1)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    return model, tmp_path / "w.pt"


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_list_models_lists_timm_and_torchvision(capsys):
    assert main(["list", "models", "timm:*"]) == 0
    names = capsys.readouterr().out.split()
    assert "timm:resnet18" in names and len(names) > 500
    assert main(["list", "models", "torchvision:resnet*"]) == 0
    assert "torchvision:resnet18" in capsys.readouterr().out.split()


def test_analyze_a_timm_model_data_free_with_input_shape(capsys):
    assert main(["analyze", "--model", "timm:test_resnet", "--input-shape", "3,32,32", "--num-classes", "10",
                 "--format", "json", "--norms", "2"]) == 0
    report = _json(capsys)
    assert report["alignment_mode"] == "identity" and report["n_samples"] == 0
    assert report["bounds"]["2"]["delta"] == pytest.approx(0.5)


@pytest.mark.parametrize(("data", "delta"), [([], 0.2), (["--data", "synthetic", "--data-option", "shape=[1,8,8]"], 8 / 255)])
def test_analyze_delta_defaults_to_the_datasets_budget(capsys, data, delta):
    assert main(["analyze", *CNN, *data, "--n-examples", "0", "--format", "json", "--norms", "inf"]) == 0
    assert _json(capsys)["bounds"]["inf"]["delta"] == pytest.approx(delta)


def test_analyze_of_a_digits_checkpoint_uses_the_digits_budget_and_device(tmp_path, capsys, digits_weights):
    model, _ = digits_weights
    rp.save_pruned(model, tmp_path / "d.pt", meta={"data": {"name": "digits"}})
    assert main(["analyze", "--checkpoint", str(tmp_path / "d.pt"), "--n-examples", "16", "--device", "cpu",
                 "--format", "json", "--norms", "inf"]) == 0
    report = _json(capsys)
    assert report["bounds"]["inf"]["delta"] == pytest.approx(0.2) and report["n_samples"] == 16
    assert main(["analyze", "--checkpoint", str(tmp_path / "d.pt"), "--device", "tpu9"]) == 1
    assert "Unknown device" in capsys.readouterr().err


def test_prune_and_eval_a_model_with_weights(tmp_path, capsys, digits_weights):
    model, weights = digits_weights
    out = tmp_path / "p.pt"
    assert main(["prune", *CNN, "--weights", str(weights), "--data", "digits", "--ratio", "0.5", "--method", "fixed",
                 "--device", "cpu", "--out", str(out), "--format", "json"]) == 0
    assert _json(capsys)["macs_kept"] < 1
    pruned = rp.load_pruned(out)
    assert pruned.robustprune_meta["data"] == {"name": "digits"}
    assert pruned.robustprune_meta["model_source"] == {"model": "cnn-small", "weights": str(weights)}
    # eval of --model --weights is the weights' model: same accuracy as evaluating it directly
    assert main(["eval", *CNN, "--weights", str(weights), "--data", "digits", "--no-latency", "--format", "json"]) == 0
    from robustprune.data import create_loaders

    direct = rp.evaluate(model, create_loaders("digits", batch_size=256).test, latency=False)
    assert _json(capsys)["clean_accuracy"] == pytest.approx(direct.clean_accuracy)


def test_model_source_bad_inputs_are_one_line_errors(tmp_path, capsys, digits_weights):
    _, weights = digits_weights
    rp.save_pruned(rp.create_model("cnn-small", input_shape=(1, 8, 8)), tmp_path / "c.pt")
    cases = [
        (["prune", "--checkpoint", str(tmp_path / "c.pt"), "--weights", str(weights), "--eps", "0.5",
          "--out", str(tmp_path / "o.pt")], "--weights apply to --model"),
        (["eval", *CNN, "--weights", str(weights)], "pass --data NAME"),
        (["analyze", "--model", "cnn-small", "--weights", str(weights), "--n-examples", "0"], "do not fit"),
        (["analyze", *CNN, "--weights", str(tmp_path / "none.pt")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.pt").exists()
    assert main(["analyze", "--model", "cnn-small", "--input-shape", "3,x,4"]) == 2
    assert main(["prune", "--model", "cnn-small", "--checkpoint", "c.pt", "--eps", "0.5", "--out", "o.pt"]) == 2


def test_run_weights_start_the_dense_model_without_training(tmp_path, digits_weights, monkeypatch):
    model, weights = digits_weights
    sets = ["seeds=[0]", "train.epochs=0", "finetune.epochs=0", "prune=[{method='epsilon', eps=[0.5]}]",
            "model.widths=[8,16]", "eval.eps=0.1", "eval.n_examples=16", "eval.n_iter=2",
            f"output={json.dumps(str(tmp_path / 'runs'))}"]
    without = load_recipe(TINY, sets)
    with pytest.raises(rp.RobustPruneError, match="train.epochs = 0 would keep the random initialization"):
        from robustprune.recipe.preflight import preflight

        preflight([without])
    recipe = load_recipe(TINY, [*sets, f"model.weights={json.dumps(str(weights))}"])
    assert recipe.model.weights == str(weights)
    result = run_recipe(recipe, progress=False)
    dense = rp.load_pruned(Path(result.run_dir) / "checkpoints" / "seed0" / "dense.pt")
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), model.state_dict().values()))


def test_run_weights_flag_maps_to_the_recipe_key(tmp_path, capsys, digits_weights):
    _, weights = digits_weights
    argv = ["run", str(TINY), "--dry-run", "--set", "seeds=[0]", "--set", "model.widths=[8,16]",
            "--set", f"output={json.dumps(str(tmp_path))}", "--weights", str(weights)]
    assert main(argv) == 0
    assert f'weights = "{weights}"' in capsys.readouterr().out
    bad = tmp_path / "bad.pt"
    torch.save(rp.create_model("cnn-small", num_classes=3, input_shape=(1, 8, 8)).state_dict(), bad)
    assert main([*argv[:-1], str(bad)]) == 1
    assert "model.weights" in capsys.readouterr().err
