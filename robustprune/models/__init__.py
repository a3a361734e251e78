"""Model registry, as in timm: ``@register_model`` entry points, ``create_model``, ``list_models``.

Our models take inputs in [0, 1] and normalize internally (a :class:`Normalize` first
layer with the dataset's mean/std). ``timm:<name>`` and ``torchvision:<name>`` pass through
to those libraries, with random weights (nothing is downloaded) unless ``pretrained=True``
(timm) or ``weights=`` (torchvision) asks for theirs, and are wrapped with a Normalize
layer when ``mean``/``std`` are given. :func:`load_weights` copies a weights file into a
model after checking every name and shape.

Every created model records how it was built in ``model.robustprune_spec`` (a
:class:`ModelSpec`): the registry name, keyword arguments and input shape. Pruning uses it
to infer example inputs, checkpoints use it to rebuild the architecture.

- :mod:`~robustprune.models._registry`: the registry, :func:`create_model`, :class:`ModelSpec`;
- :mod:`~robustprune.models.passthrough`: ``timm:`` / ``torchvision:`` models;
- :mod:`~robustprune.models.weights`: :func:`load_weights`, pretrained weights, :class:`WeightsError`;
- :mod:`~robustprune.models.mlp`: :class:`FCN` (``fcn``, ``lowrank-fcn``);
- :mod:`~robustprune.models.cifar`: ``cnn-small``, ``resnet18-cifar``, ``vgg16-cifar``.
"""

# importing the model files registers their entry points
from robustprune.models._normalize import NormalizedModel
from robustprune.models._registry import (
    ModelSpec,
    create_model,
    list_models,
    model_spec,
    register_model,
)
from robustprune.models._registry import model_min_size as model_min_size
from robustprune.models.cifar import BasicBlock as BasicBlock
from robustprune.models.cifar import CNNSmall, ResNetCifar, VGGCifar
from robustprune.models.cifar import cnn_small as cnn_small
from robustprune.models.cifar import resnet18_cifar as resnet18_cifar
from robustprune.models.cifar import vgg16_cifar as vgg16_cifar
from robustprune.models.mlp import FCN
from robustprune.models.mlp import fcn as fcn
from robustprune.models.mlp import lowrank_fcn as lowrank_fcn
from robustprune.models.weights import WeightsError, load_weights

__all__ = [
    "ModelSpec",
    "register_model",
    "create_model",
    "list_models",
    "model_spec",
    "load_weights",
    "WeightsError",
    "NormalizedModel",
    "FCN",
    "CNNSmall",
    "ResNetCifar",
    "VGGCifar",
]
