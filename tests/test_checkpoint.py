"""Checkpoints of pruned models: plain data, weights_only loading, replayed history, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import robustprune as rp
from robustprune import checkpoint
from robustprune.checkpoint import CheckpointError, load_pruned, save_pruned
from robustprune.errors import InvalidArgumentError
from robustprune.models import create_model

# (model name, input shape, create kwargs, pruning steps)
ROUND_TRIPS = {
    "resnet18-cifar: epsilon then fixed": (
        "resnet18-cifar", (3, 16, 16), {"width": 8},
        [dict(eps=0.4), dict(method="fixed", ratio=0.3)],
    ),
    "vit_tiny: epsilon then spectral": (
        "timm:vit_tiny_patch16_224", (3, 32, 32), {},
        [dict(eps=0.5), dict(eps=0.3, method="spectral")],
    ),
    "mobilenet_v3_small: global": (
        "torchvision:mobilenet_v3_small", (3, 64, 64), {"mean": [0.5] * 3, "std": [0.25] * 3},
        [dict(method="global", ratio=0.4)],
    ),
    "lowrank-fcn: spectral then epsilon": (
        "lowrank-fcn", (1, 8, 8), {"rank": 6, "width": 32},
        [dict(eps=0.2, method="spectral"), dict(eps=0.5)],
    ),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_save_load_round_trip_reproduces_outputs_bit_for_bit(case, tmp_path):
    name, shape, kw, steps = ROUND_TRIPS[case]
    model = create_model(name, input_shape=shape, **kw)
    for step in steps:
        rp.prune(model, **step)
    model.eval()
    x = torch.rand(4, *shape)
    with torch.no_grad():
        expected = model(x)

    path = save_pruned(model, tmp_path / "pruned.pt", meta={"clean_accuracy": 0.91, "tags": ["a", "b"]})
    loaded = load_pruned(path)

    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert loaded.robustprune_meta == {"clean_accuracy": 0.91, "tags": ["a", "b"]}
    assert len(loaded.robustprune_history) == len(steps)


def test_checkpoint_is_plain_data_loadable_with_weights_only(tmp_path):
    model = create_model("cnn-small")
    rp.prune(model, eps=0.5)
    path = save_pruned(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)

    def plain(v) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, (str, int)) and plain(x) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (bool, int, float, str, torch.Tensor))

    assert plain(payload)
    assert payload["arch"] == "cnn-small" and payload["input_shape"] == [1, 8, 8]
    assert payload["history"] == model.robustprune_history
    assert payload["versions"]["torch-pruning"] == "1.6.1"


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = create_model("fcn", width=16)
    path = tmp_path / "m.pt"
    save_pruned(model, path)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    rp.prune(model, eps=0.5)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind


def test_loaded_model_can_be_pruned_again_and_round_trips_again(tmp_path):
    model = create_model("resnet18-cifar", width=8, input_shape=(3, 16, 16))
    rp.prune(model, eps=0.5)
    loaded = load_pruned(save_pruned(model, tmp_path / "a.pt"))
    rp.prune(loaded, method="fixed", ratio=0.25)
    again = load_pruned(save_pruned(loaded, tmp_path / "b.pt"))
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(again.eval()(x), loaded.eval()(x))
    assert [s["method"] for s in again.robustprune_history] == ["epsilon", "fixed"]


def test_arch_can_be_given_explicitly_and_is_required_without_a_recorded_spec(tmp_path):
    model = create_model("fcn", width=16, num_classes=3)
    del model.robustprune_spec
    rp.prune(model, eps=0.5, example_inputs=torch.rand(1, 1, 8, 8))
    with pytest.raises(InvalidArgumentError, match="arch="):
        save_pruned(model, tmp_path / "m.pt")
    path = save_pruned(model, tmp_path / "m.pt", arch="fcn", arch_kwargs={"width": 16, "num_classes": 3})
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(load_pruned(path).eval()(x), model.eval()(x))


def test_loading_something_else_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_pruned(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="not a robustprune"):
        load_pruned(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError):
        load_pruned(garbage)


def test_checkpoint_whose_history_does_not_fit_its_architecture_fails_clearly(tmp_path):
    model = create_model("fcn", width=16)
    rp.prune(model, eps=0.5)
    # save_pruned refuses to write it (the history replays on width 32 to other widths)...
    with pytest.raises(InvalidArgumentError, match=r"arch_kwargs=\{'width': 32\}.*do not fit"):
        save_pruned(model, tmp_path / "refused.pt", arch_kwargs={"width": 32})
    assert not (tmp_path / "refused.pt").exists()
    # ...and such a file, written otherwise, is refused clearly on load
    path = save_pruned(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["arch_kwargs"] = {**payload["arch_kwargs"], "width": 32}
    torch.save(payload, path)
    with pytest.raises(CheckpointError):
        load_pruned(path)


def test_meta_must_be_plain_data(tmp_path):
    with pytest.raises(InvalidArgumentError, match="meta"):
        save_pruned(create_model("fcn"), tmp_path / "m.pt", meta={"fn": nn.ReLU()})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "cnn-small"}, r"arch='cnn-small'.*do not fit"),
        ({"arch_kwargs": {"bogus": 1}}, r"cannot be built from these arguments"),
        ({"arch_kwargs": {"width": 16}}, r"arch_kwargs=\{'width': 16\}.*do not fit"),
        ({"arch_kwargs": {"input_shape": "abc"}}, r"arch_kwargs\['input_shape'\] must be the shape"),
        ({"arch_kwargs": [1, 2]}, r"arch_kwargs must be a dict"),
        ({"meta": "abc"}, r"meta must be a dict"),
        ({"meta": [1]}, r"meta must be a dict"),
        ({"history": [{"foo": 1}]}, r"history: Pruning history\[0\] has unknown kind"),
        ({"history": 5}, r"history must be a list of pruning steps"),
    ],
)
def test_save_pruned_never_writes_a_checkpoint_that_cannot_be_loaded(tmp_path, kwargs, match):
    model = create_model("fcn", width=8)
    with pytest.raises(InvalidArgumentError, match=match):
        save_pruned(model, tmp_path / "m.pt", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_save_pruned_refuses_a_non_module(tmp_path):
    with pytest.raises(InvalidArgumentError, match="save_pruned needs a torch.nn.Module"):
        save_pruned("abc", tmp_path / "m.pt", arch="fcn")


@pytest.mark.parametrize(
    "path, map_location, match",
    [
        (None, "cpu", r"path must be a checkpoint file path"),
        (5, "cpu", r"path must be a checkpoint file path"),
        ("GOOD", "bogus", r"map_location='bogus' is not a device"),
        ("GOOD", 5, r"map_location must be a device"),
    ] + ([] if torch.cuda.is_available() else [("GOOD", "cuda", r"CUDA is not available here")]),
)
def test_load_pruned_names_the_bad_argument_not_the_file(tmp_path, path, map_location, match):
    good = save_pruned(create_model("fcn", width=8), tmp_path / "good.pt")
    with pytest.raises(InvalidArgumentError, match=match):
        load_pruned(good if path == "GOOD" else path, map_location=map_location)


def test_each_modules_mode_and_frozen_parameters_survive_a_round_trip(tmp_path):
    model = create_model("cnn-small", widths=(4, 8))
    rp.prune(model, method="fixed", ratio=0.5)
    model.train()
    next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eval()
    next(model.parameters()).requires_grad_(False)
    loaded = load_pruned(save_pruned(model, tmp_path / "m.pt"))
    assert [(n, m.training) for n, m in loaded.named_modules()] == [(n, m.training) for n, m in model.named_modules()]
    assert [(n, q.requires_grad) for n, q in loaded.named_parameters()] == [
        (n, q.requires_grad) for n, q in model.named_parameters()]
    assert any(not m.training for m in loaded.modules()) and not all(q.requires_grad for q in loaded.parameters())
