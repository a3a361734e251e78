"""The layer-type coverage zoo: every layer type torch-pruning 1.6.1 can prune, in a tiny model.

Each model is either pruned correctly (the forward runs, the output shape is kept, the
reported MACs are the pruned model's MACs, a target_macs is met or the closest reachable
value is reported) or refused with a RobustPruneError that leaves it untouched. Nothing
escapes as a raw exception. Models are built tiny (widths <= 32, inputs <= 16x16) and built
fresh per case, so the whole file stays well under 2 GB and a minute on one thread.
"""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Callable

import pytest
import torch
from badinput import assert_unchanged, snapshot
from torch import nn

from robustprune.errors import ModelNotSupportedError, RobustPruneError
from robustprune.pruners import count_macs_params, prune

TOL = 0.01


class Tokens(nn.Module):
    """(B, T, F) -> Linear embed -> ``block`` -> mean over tokens -> Linear head."""

    def __init__(self, block: nn.Module, dim: int = 16, features: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.block = block
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


class MHA(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0] + x)


class Recurrent(nn.Module):
    def __init__(self, cls: type[nn.RNNBase], **kw) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.rnn = cls(16, 16, batch_first=True, **kw)
        self.head = nn.Linear(self.rnn.hidden_size * (2 if self.rnn.bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0][:, -1])


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.fc3.weight = self.fc2.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))


def _conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 16, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3))


def _conv_transpose() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(16, 16, 2, stride=2),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 3))


def _grouped() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=4),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def _layernorm() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 16), nn.LayerNorm(16),
                         nn.GELU(), nn.Linear(16, 3))


def _timm_vit_block() -> nn.Module:
    from timm.models.vision_transformer import Block

    return Tokens(Block(16, num_heads=2, mlp_ratio=2.0))


def _timm_mixer_block() -> nn.Module:
    from timm.models.mlp_mixer import MixerBlock

    return Tokens(MixerBlock(16, seq_len=4, mlp_ratio=(0.5, 2.0)))


def _timm_convnext_block() -> nn.Module:
    from timm.models.convnext import ConvNeXtBlock

    return nn.Sequential(nn.Conv2d(3, 16, 2, stride=2), ConvNeXtBlock(16, kernel_size=3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 3))


def _timm_poolformer_block() -> nn.Module:
    from timm.models.metaformer import MetaFormerBlock, Pooling

    return nn.Sequential(nn.Conv2d(3, 16, 2, stride=2), MetaFormerBlock(16, token_mixer=Pooling, mlp_ratio=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def _torchvision_vit_block() -> nn.Module:
    from torchvision.models.vision_transformer import EncoderBlock

    return Tokens(EncoderBlock(num_heads=2, hidden_dim=16, mlp_dim=32, dropout=0.0, attention_dropout=0.0))


def _torchvision_swin_block() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformerBlock

    class Swin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 16, 2, stride=2)
            self.block = SwinTransformerBlock(16, 2, window_size=[2, 2], shift_size=[1, 1], stochastic_depth_prob=0.0)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.embed(x).permute(0, 2, 3, 1)).mean((1, 2)))

    return Swin()


def _torchvision_mobilenet_block() -> nn.Module:
    from torchvision.models.mobilenetv2 import InvertedResidual

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), InvertedResidual(16, 16, 1, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 3))


#: name -> (builder, example input shape)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv1d": (_conv1d, (2, 3, 16)),
    "conv-transpose2d": (_conv_transpose, (2, 3, 6, 6)),
    "grouped-conv": (_grouped, (2, 3, 8, 8)),
    "layernorm-mlp": (_layernorm, (2, 8)),
    "nn-multihead-attention": (lambda: Tokens(MHA()), (2, 4, 8)),
    "timm-vit-block": (_timm_vit_block, (2, 4, 8)),
    "timm-mixer-block": (_timm_mixer_block, (2, 4, 8)),
    "timm-convnext-block": (_timm_convnext_block, (2, 3, 8, 8)),
    "timm-poolformer-block": (_timm_poolformer_block, (2, 3, 8, 8)),
    "torchvision-vit-block": (_torchvision_vit_block, (2, 4, 8)),
    "torchvision-swin-block": (_torchvision_swin_block, (2, 3, 8, 8)),
    "torchvision-inverted-residual": (_torchvision_mobilenet_block, (2, 3, 8, 8)),
    "lstm": (lambda: Recurrent(nn.LSTM), (2, 5, 8)),
    "lstm-bidirectional-2-layer": (lambda: Recurrent(nn.LSTM, num_layers=2, bidirectional=True), (2, 5, 8)),
    "gru": (lambda: Recurrent(nn.GRU), (2, 5, 8)),
    "rnn": (lambda: Recurrent(nn.RNN), (2, 5, 8)),
    "tied-weights": (Tied, (2, 8)),
}

#: what the zoo refuses on purpose (channel pruning), and the message it must give
REFUSED = {"gru": "GRU", "rnn": "RNN", "tied-weights": "tied", "torchvision-swin-block": "ShiftedWindowAttention"}

SETTINGS = {
    "epsilon": {"method": "epsilon", "eps": 0.3},
    "fixed-target": {"method": "fixed", "target_macs": 0.7},
    "global": {"method": "global", "ratio": 0.3},
    "spectral": {"method": "spectral", "eps": 0.3},
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_is_pruned_correctly_or_refused_clearly(name, setting, caplog):
    torch.manual_seed(0)
    build, shape = ZOO[name]
    model = build().eval()
    x = torch.rand(shape)
    options = SETTINGS[setting]
    try:
        before = snapshot(model)
        with torch.no_grad():
            out_before = model(x)
        try:
            with caplog.at_level(logging.WARNING, logger="robustprune"), warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                report = prune(model, example_inputs=x, **options)
        except RobustPruneError as exc:
            assert_unchanged(model, before)
            if name in REFUSED and options["method"] != "spectral":
                assert isinstance(exc, ModelNotSupportedError) and REFUSED[name] in str(exc), exc
            return
        assert name not in REFUSED or options["method"] == "spectral", f"{name} should be refused"
        with torch.no_grad():
            out = model(x)
        assert out.shape == out_before.shape and torch.isfinite(out).all()
        macs, params = count_macs_params(model, x)
        assert (report.macs_after, report.params_after) == (macs, params)
        assert report.macs_after <= report.macs_before
        if "target_macs" in options:
            target = options["target_macs"]
            met = abs(report.macs_kept - target) <= TOL * target
            reported = "closest achievable" in caplog.text or any("no prunable layer" in str(w.message) for w in warned)
            assert met or reported, (report.macs_kept, caplog.text)
        if name == "tied-weights":
            assert model.fc3.weight is model.fc2.weight
    finally:
        del model
        gc.collect()


@pytest.mark.parametrize("name", [n for n in ZOO if n not in REFUSED])
def test_zoo_model_at_target_macs_one_is_left_unpruned(name):
    build, shape = ZOO[name]
    model = build().eval()
    x = torch.rand(shape)
    before = snapshot(model)
    try:
        report = prune(model, target_macs=1.0, example_inputs=x)
    except ModelNotSupportedError:  # a model torch-pruning cannot plan (e.g. timm's MixerBlock)
        assert_unchanged(model, before)
        return
    assert report.macs_kept == 1.0 and all(r.kept == r.total for r in report.rows)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.state.items()}
