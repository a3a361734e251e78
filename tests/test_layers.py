"""Layer enumeration, matricization, BN/normalization folding, chains and consecutive pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustprune.errors import ModelNotSupportedError
from robustprune.layers import (
    LowRankLinear,
    classifier_head,
    consecutive_pairs,
    fold_batchnorm,
    fold_for_analysis,
    matricize,
    prunable_layers,
    sequential_chain,
)
from robustprune.models import create_model


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


def test_matricize_rows_are_output_units():
    conv = nn.Conv2d(6, 8, 3, groups=2)
    assert matricize(conv).shape == (8, 3 * 9)
    assert matricize(nn.Linear(5, 4)).shape == (4, 5)
    low = LowRankLinear(10, 6, rank=2)
    assert torch.allclose(matricize(low), low.b.weight @ low.a.weight)


def test_prunable_layers_include_depthwise_and_lowrank_as_one():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), LowRankLinear(4, 3, 2))
    names = [n for n, _ in prunable_layers(model)]
    assert names == ["0", "2"]


@pytest.mark.parametrize("name,shape", [("cnn-small", (1, 8, 8)), ("vgg16-cifar", (3, 32, 32)),
                                        ("fcn", (1, 8, 8)), ("lowrank-fcn", (1, 8, 8)),
                                        ("resnet18-cifar", (3, 32, 32))])
def test_folding_bn_and_normalization_preserves_outputs(name, shape):
    kw = {"resnet18-cifar": {"width": 8}, "vgg16-cifar": {"width_mult": 0.125}}.get(name, {})
    model = _randomize_bn(
        create_model(name, input_shape=shape, mean=[0.3] * shape[0], std=[0.4] * shape[0], **kw)
    )
    x = torch.rand(4, *shape)
    folded = fold_for_analysis(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fold_batchnorm(model).modules())
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("affine", [True, False])
def test_folding_bn_after_conv_and_linear_preserves_outputs(affine):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, affine=affine), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5, affine=affine),
    )
    for bn in (model[1], model[5]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    folded = fold_batchnorm(model)
    assert [type(m) for m in folded] == [nn.Conv2d, nn.Identity, nn.ReLU, nn.Flatten, nn.Linear, nn.Identity]
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_folding_a_bn_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ModelNotSupportedError, match="running statistics"):
        fold_batchnorm(model)


def test_folding_scales_the_first_layer_by_the_input_std():
    model = create_model("fcn", width=16, mean=[0.3], std=[0.5]).eval()
    folded = fold_for_analysis(model)
    assert torch.allclose(folded.features[1].weight, model.features[1].weight / 0.5)


@pytest.mark.parametrize("name,shape,n_layers", [("fcn", (1, 8, 8), 3), ("vgg16-cifar", (3, 32, 32), 14),
                                                 ("cnn-small", (1, 8, 8), 7)])
def test_chain_extraction_for_sequential_models(name, shape, n_layers):
    kw = {"vgg16-cifar": {"width_mult": 0.125}}.get(name, {})
    model = create_model(name, input_shape=shape, **kw)
    chain = sequential_chain(model)
    assert chain.is_chain and len(chain.layers) == n_layers
    assert [n for n, _ in prunable_layers(model)] == list(chain.layers)
    assert len(chain.through) == n_layers - 1


def test_chain_extraction_refuses_resnet_with_a_reason():
    chain = sequential_chain(create_model("resnet18-cifar", width=8))
    assert not chain.is_chain
    assert "residual" in chain.reason


def test_consecutive_pairs_inside_resnet_blocks():
    model = create_model("resnet18-cifar", width=8)
    pairs = {(p.a, p.b) for p in consecutive_pairs(model, torch.rand(1, 3, 32, 32))}
    assert ("layer1.0.conv1", "layer1.0.conv2") in pairs
    assert ("layer4.1.conv1", "layer4.1.conv2") in pairs
    # conv2's output goes through the residual add: no pair from conv2 to the next block
    assert ("layer1.0.conv2", "layer1.1.conv1") not in pairs


def test_classifier_head_found_for_all_kinds():
    fcn = create_model("fcn")
    assert classifier_head(fcn) is fcn.head
    m = create_model("cnn-small")
    assert classifier_head(m) is m.head
    tv = create_model("torchvision:resnet18")
    assert classifier_head(tv) is tv.fc
    vgg = create_model("vgg16-cifar", width_mult=0.125)
    assert classifier_head(vgg) is vgg.classifier
