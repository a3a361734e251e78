"""Model registry: every registered model builds and trains on every compatible dataset shape."""

from __future__ import annotations

import pytest
import torch

from robustprune.data import dataset_info, list_datasets
from robustprune.errors import RobustPruneError
from robustprune.layers import Normalize
from robustprune.models import create_model, list_models, model_min_size, model_spec

# one shape per dataset family: digits 8x8 and upsampled, CIFAR/SVHN, MNIST
_SHAPES = {
    "digits": (1, 8, 8),
    "digits@32": (1, 32, 32),
    "cifar10": (3, 32, 32),
    "mnist": (1, 28, 28),
}


def _cases():
    for model in list_models():
        for dataset, shape in _SHAPES.items():
            if min(shape[1:]) >= model_min_size(model):
                yield model, dataset, shape


def _small_kwargs(name: str) -> dict:
    return {"resnet18-cifar": {"width": 8}, "vgg16-cifar": {"width_mult": 0.125}}.get(name, {})


@pytest.mark.parametrize("name,dataset,shape", list(_cases()))
def test_every_model_runs_forward_and_backward(name, dataset, shape):
    model = create_model(name, num_classes=10, input_shape=shape, **_small_kwargs(name))
    x = torch.rand(3, *shape)
    out = model(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_models_normalize_internally_with_dataset_statistics():
    info = dataset_info("cifar10")
    model = create_model("cnn-small", input_shape=info.input_shape, mean=info.mean, std=info.std)
    assert isinstance(model.normalize, Normalize)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(info.mean))
    spec = model_spec(model)
    assert spec is not None and spec.name == "cnn-small" and spec.input_shape == (3, 32, 32)
    rebuilt = create_model(spec.name, input_shape=spec.input_shape, **spec.kwargs)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())


def test_lowrank_fcn_hidden_weights_have_the_requested_rank():
    model = create_model("lowrank-fcn", rank=3, width=32, depth=2)
    w = model.features[3].weight
    assert torch.linalg.matrix_rank(w.detach()) == 3


def test_timm_and_torchvision_passthrough_random_weights():
    tv = create_model("torchvision:resnet18", num_classes=7, mean=[0.5] * 3, std=[0.2] * 3)
    assert tv(torch.rand(1, 3, 64, 64)).shape == (1, 7)
    assert model_spec(tv).input_shape == (3, 224, 224)
    tm = create_model("timm:resnet10t", num_classes=5)
    assert tm(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    assert model_spec(tm).input_shape == tuple(tm.pretrained_cfg["input_size"])


def test_unknown_model_and_too_small_input_fail_clearly():
    with pytest.raises(RobustPruneError, match="Registered models"):
        create_model("resnet-typo")
    with pytest.raises(RobustPruneError, match="size=32"):
        create_model("vgg16-cifar", input_shape=(1, 8, 8))
    with pytest.raises(RobustPruneError, match="timm has no model"):
        create_model("timm:not_a_model")


def test_registry_covers_datasets_used_in_tests():
    assert {"digits", "cifar10", "mnist"} <= set(list_datasets())
