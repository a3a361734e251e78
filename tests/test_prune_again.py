"""Repeated ``prune`` calls prune the current model; the report also counts from the original."""

from __future__ import annotations

import pytest

import robustprune as rp
from robustprune.models import create_model


def _model():
    return create_model("cnn-small", num_classes=10, input_shape=(1, 8, 8), widths=[16, 32, 64])


def test_a_second_prune_reports_its_share_of_the_current_and_of_the_original_model(tmp_path):
    model = _model()
    first = rp.prune(model, target_macs=0.5, method="fixed")
    assert first.macs_original == first.macs_before
    assert first.macs_kept_of_original == pytest.approx(first.macs_kept)
    assert "of the original" not in str(first)
    path = tmp_path / "half.pt"
    rp.save_pruned(model, path)
    again = rp.load_pruned(path)  # the original MACs travel with the saved history
    second = rp.prune(again, target_macs=0.5, method="fixed")
    assert second.macs_before == first.macs_after
    assert second.macs_original == first.macs_before
    assert second.macs_kept_of_original == pytest.approx(second.macs_after / first.macs_before)
    assert second.macs_kept_of_original < 0.35
    assert "of the original" in str(second).splitlines()[1]
    assert second.to_dict()["macs_kept_of_original"] == pytest.approx(second.macs_kept_of_original)


@pytest.mark.parametrize("lib, build, name", [
    ("torchvision", lambda: __import__("torchvision").models.resnet34(num_classes=10), "torchvision:resnet34"),
    ("timm", lambda: __import__("timm").create_model("resnet18", num_classes=7), "timm:resnet18"),
])
def test_save_pruned_without_arch_suggests_the_library_name(tmp_path, lib, build, name):
    import torch

    model = build()
    rp.prune(model, target_macs=0.5, method="fixed", example_inputs=torch.rand(1, 3, 32, 32))
    with pytest.raises(rp.RobustPruneError, match=f"arch='{name}'"):
        rp.save_pruned(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
    hint = {"num_classes": 10 if lib == "torchvision" else 7}
    rp.save_pruned(model, tmp_path / "m.pt", arch=name, arch_kwargs=hint)  # the suggestion works
    back = rp.load_pruned(tmp_path / "m.pt")
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    back.eval()
    assert torch.allclose(back(x), model(x), atol=1e-5)
