"""Pretrained weights of the passthrough models (from a local cache the test fills first:
nothing is downloaded) and :func:`load_weights` (every kind of weights file, shape checks
before anything is copied)."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import robustprune as rp
from robustprune.models import WeightsError, create_model, list_models, load_weights


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """timm's Hugging Face cache and torchvision's TORCH_HOME under tmp_path, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def _same_state(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not any(k.startswith(s) for s in skip))


def _fill_hf_cache(root, repo_id, model):
    from safetensors.torch import save_file

    folder = root / "hf" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))


def test_timm_pretrained_loads_from_the_local_cache(offline_hub):
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", pretrained=False)
    _fill_hf_cache(offline_hub, timm.models.get_pretrained_cfg("test_resnet").hf_hub_id, reference)
    model = create_model("timm:test_resnet", num_classes=1000, pretrained=True)
    assert _same_state(model, reference)
    assert "pretrained" not in model.robustprune_spec.kwargs  # reloading downloads nothing
    # another class count: the backbone is pretrained, the classifier fresh
    ten = create_model("timm:test_resnet", num_classes=10, pretrained=True)
    assert torch.equal(ten.state_dict()["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])
    assert ten.get_classifier().out_features == 10


def test_timm_pretrained_offline_and_not_cached_is_a_clear_error(offline_hub):
    with pytest.raises(WeightsError, match="offline and not in the local cache"):
        create_model("timm:test_resnet", pretrained=True)


def test_torchvision_weights_load_from_torch_home(offline_hub):
    import torchvision

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    target = offline_hub / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = create_model("torchvision:resnet18", num_classes=1000, weights="DEFAULT")
    assert _same_state(model, reference)
    assert "weights" not in model.robustprune_spec.kwargs
    ten = create_model("torchvision:resnet18", num_classes=10, weights="IMAGENET1K_V1")
    assert torch.equal(ten.conv1.weight, reference.conv1.weight) and ten.fc.out_features == 10


def test_torchvision_weights_offline_and_unknown_names_are_clear_errors(offline_hub):
    with pytest.raises(WeightsError, match=r"TORCH_HOME"):
        create_model("torchvision:resnet18", weights="DEFAULT")
    with pytest.raises(rp.RobustPruneError, match="no weights 'NOPE'; choose one of"):
        create_model("torchvision:resnet18", weights="NOPE")


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp", "save_pruned"])
def test_load_weights_takes_every_kind_of_file(tmp_path, wrap):
    torch.manual_seed(0)
    source = create_model("cnn-small", input_shape=(1, 8, 8))
    target = create_model("cnn-small", input_shape=(1, 8, 8))
    assert not _same_state(source, target)
    path = tmp_path / "w.pt"
    state = source.state_dict()
    payload = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
               "ddp": {f"module.{k}": v for k, v in state.items()}}.get(wrap)
    if wrap == "save_pruned":
        rp.save_pruned(source, path)
    else:
        torch.save(payload, path)
    assert load_weights(target, path) is target
    assert _same_state(source, target)


def test_load_weights_into_a_normalized_timm_model_takes_the_plain_library_file(tmp_path):
    import timm

    plain = timm.create_model("test_resnet", num_classes=10)
    torch.save(plain.state_dict(), tmp_path / "w.pth")
    wrapped = create_model("timm:test_resnet", num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    load_weights(wrapped, tmp_path / "w.pth")
    assert torch.equal(wrapped.net.conv1[0].weight, plain.conv1[0].weight)
    assert torch.allclose(wrapped.normalize.mean.flatten(), torch.tensor([0.5] * 3))  # kept


def test_load_weights_checks_shapes_before_copying_anything(tmp_path):
    torch.manual_seed(0)
    source = create_model("cnn-small", num_classes=5, input_shape=(1, 8, 8))
    target = create_model("cnn-small", num_classes=10, input_shape=(1, 8, 8))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    torch.save(source.state_dict(), tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"shapes differ .*file \(5,.*model \(10,.*Nothing was loaded"):
        load_weights(target, tmp_path / "w.pt")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_load_weights_of_a_pruned_checkpoint_says_to_use_load_pruned(tmp_path):
    model = create_model("cnn-small", input_shape=(1, 8, 8))
    rp.prune(model, method="fixed", ratio=0.5)
    rp.save_pruned(model, tmp_path / "p.pt")
    with pytest.raises(WeightsError, match="pruned checkpoint: load it with robustprune.load_pruned"):
        load_weights(create_model("cnn-small", input_shape=(1, 8, 8)), tmp_path / "p.pt")


def test_load_weights_refuses_missing_folder_and_non_weights_files(tmp_path):
    model = create_model("cnn-small", input_shape=(1, 8, 8))
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(model, tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="is a folder"):
        load_weights(model, tmp_path)
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(WeightsError, match="not a weights file"):
        load_weights(model, tmp_path / "t.txt")
    torch.save({"epoch": 1}, tmp_path / "e.pt")
    with pytest.raises(WeightsError, match="holds no state_dict"):
        load_weights(model, tmp_path / "e.pt")


def test_list_models_lists_the_passthrough_libraries():
    import timm
    import torchvision

    assert "timm:resnet18" in list_models("timm:*")
    assert len(list_models("timm:*")) == len(timm.list_models())
    assert list_models("torchvision:resnet1*") == sorted(
        f"torchvision:{n}" for n in torchvision.models.list_models() if n.startswith("resnet1"))
    assert "cnn-small" in list_models() and not any(":" in n for n in list_models())
