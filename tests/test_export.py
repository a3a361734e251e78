"""``rp.export`` of pruned models in every format (ONNX checked by onnxruntime), its bad
inputs, and ``robustprune export``: the acceptance chain prune -> export -> onnxruntime."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

import robustprune as rp
from robustprune.cli import main
from robustprune.errors import InvalidArgumentError, UnknownNameError
from robustprune.export import FORMATS, ExportError


def _pruned_resnet():
    torch.manual_seed(0)
    model = rp.create_model("resnet18-cifar", width=8, input_shape=(3, 32, 32))
    rp.prune(model, method="fixed", ratio=0.5)
    return model.eval()


def _pruned_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    x = torch.rand(1, 3, 32, 32)
    report = rp.prune(model, method="fixed", ratio=0.5, example_inputs=x)
    assert report.macs_kept < 1.0
    return model.eval(), x


def _reload(path, fmt, x):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    return torch.export.load(str(path)).module()(x)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_of_a_pruned_resnet_reproduces_its_outputs(tmp_path, fmt):
    model = _pruned_resnet()
    path = tmp_path / f"m{FORMATS[fmt]}"
    result = rp.export(model, path, format=fmt)
    assert path.is_file() and result.format == fmt and result.input_shape == [3, 32, 32]
    assert result.max_abs_diff <= 1e-4 * max(1.0, result.max_abs_output)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(_reload(path, fmt, x), model(x), atol=1e-4)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_of_a_pruned_vit_reproduces_its_outputs(tmp_path, fmt):
    model, x = _pruned_vit()
    path = tmp_path / f"vit{FORMATS[fmt]}"
    result = rp.export(model, path, format=fmt, example_inputs=x)
    assert result.max_abs_diff <= 1e-4 * max(1.0, result.max_abs_output)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(_reload(path, fmt, x), expected, atol=1e-4)
    if fmt == "onnx":
        assert result.checked_with.startswith("onnxruntime")


def test_export_refuses_bad_inputs_before_writing(tmp_path, monkeypatch):
    model = _pruned_resnet()
    with pytest.raises(UnknownNameError, match="Unknown export format 'tflite'"):
        rp.export(model, tmp_path / "m.tflite", format="tflite")
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        rp.export(model, tmp_path)
    with pytest.raises(InvalidArgumentError, match="does not exist; create it first"):
        rp.export(model, tmp_path / "missing" / "m.onnx")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r"needs onnxruntime: pip install 'robustprune\[export\]'"):
        rp.export(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"format": ["torchscript"]}, UnknownNameError, r"Unknown export format \['torchscript'\]"),
        ({"opset": True}, InvalidArgumentError, r"opset must be an integer >= 7"),
        ({"opset": "abc"}, InvalidArgumentError, r"opset must be an integer"),
        ({"opset": 3}, InvalidArgumentError, r"opset must be an integer >= 7"),
        ({"example_inputs": torch.rand(1, 5, 32, 32)}, InvalidArgumentError, r"5 channel\(s\).*statistics for 3"),
        ({"example_inputs": torch.zeros(1, 3, 32, 32, dtype=torch.long)}, InvalidArgumentError, r"floating point"),
    ],
)
def test_export_bad_arguments_leave_an_older_file_in_place(tmp_path, kwargs, error, match):
    """A refused or failed export never touches the file already at ``path``."""
    model = _pruned_resnet()
    old = tmp_path / "m.onnx"
    old.write_text("an older export")
    with pytest.raises(error, match=match):
        rp.export(model, old, **{"format": "onnx", **kwargs})
    assert old.read_text() == "an older export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_a_failed_export_keeps_the_older_file_and_a_good_one_replaces_it(tmp_path, monkeypatch):
    model = _pruned_resnet()
    old = tmp_path / "m.pt"
    old.write_text("an older export")

    def broken(*args, **kwargs):
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with pytest.raises(ExportError, match="Exporting to torchscript failed: RuntimeError: tracer exploded"):
        rp.export(model, old, format="torchscript")
    assert old.read_text() == "an older export" and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    monkeypatch.undo()
    result = rp.export(model, old, format="torchscript")
    assert result.path == str(old) and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(torch.jit.load(str(old))(x), model(x), atol=1e-4)


def test_cli_prune_a_torchvision_model_with_weights_then_export_to_onnx(tmp_path, capsys):
    """The acceptance chain: prune --model torchvision:resnet18 --weights, export, onnxruntime."""
    import onnxruntime as ort
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "w.pt")
    pruned = tmp_path / "p.pt"
    assert main(["prune", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt"),
                 "--num-classes", "10", "--input-shape", "3,32,32", "--target-macs", "0.5",
                 "--out", str(pruned), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["macs_kept"] <= 0.5 + 1e-6
    assert main(["export", str(pruned), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "max |Δ|" in out
    model = rp.load_pruned(pruned).eval()
    assert model.robustprune_meta["model_source"]["weights"] == str(tmp_path / "w.pt")
    x = torch.rand(4, 3, 32, 32)
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_cli_export_writes_each_format_next_to_the_checkpoint(tmp_path, capsys):
    rp.save_pruned(_pruned_resnet(), tmp_path / "p.pt")
    assert main(["export", str(tmp_path / "p.pt"), "--format", "torchscript", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(tmp_path / "p.torchscript.pt") and result["max_abs_diff"] < 1e-4
    assert main(["export", "--model", "cnn-small", "--input-shape", "1,8,8", "--format", "exported-program",
                 "--out", str(tmp_path / "c.pt2")]) == 0
    assert (tmp_path / "c.pt2").is_file()


def test_cli_export_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pt"), "--format", "tflite"]) == 2
    assert main(["export", "--model", "cnn-small", "--out", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
