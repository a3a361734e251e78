"""Dataset registry: ``digits`` (embedded), torchvision datasets and ``synthetic``.

Every dataset yields inputs in [0, 1] and carries its per-channel mean/std in
:class:`DatasetInfo`; models normalize internally (see :class:`robustprune.layers.Normalize`),
so attacks and budgets always live in input space.

>>> loaders = create_loaders("digits", batch_size=64)
>>> loaders.info.input_shape, loaders.info.num_classes
((1, 8, 8), 10)
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from robustprune._inputs import check_int
from robustprune._threads import available_cpus
from robustprune._torchvision_data import load_torchvision
from robustprune.errors import InvalidArgumentError, UnknownNameError

__all__ = [
    "DatasetInfo",
    "Loaders",
    "register_dataset",
    "create_loaders",
    "create_datasets",
    "list_datasets",
    "dataset_info",
    "dataset_options",
    "split_validation",
    "default_num_workers",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: input shape ``(C, H, W)``, classes, channel statistics,
    and ``eps``, the dataset's usual ℓ∞ attack budget (digits 0.2, MNIST 0.3, CIFAR/SVHN and
    synthetic 8/255): the default δ of ``robustprune analyze``."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float = 8 / 255


@dataclass(frozen=True)
class Datasets:
    """A train and a test :class:`~torch.utils.data.Dataset` with their :class:`DatasetInfo`,
    and a validation split of the training set when one was asked for (``validation=``)."""

    train: Dataset
    test: Dataset
    info: DatasetInfo
    val: Dataset | None = None


@dataclass(frozen=True)
class Loaders:
    """Train and test :class:`~torch.utils.data.DataLoader` plus the dataset's info, and
    the validation loader (None without a validation split)."""

    train: DataLoader
    test: DataLoader
    info: DatasetInfo
    val: DataLoader | None = None


_REGISTRY: dict[str, Callable[..., Datasets]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Datasets]], Callable[..., Datasets]]:
    """Register a factory ``fn(root, download, seed, **kw) -> Datasets`` under ``name``."""

    def decorator(fn: Callable[..., Datasets]) -> Callable[..., Datasets]:
        if name in _REGISTRY:
            raise InvalidArgumentError(f"A dataset named '{name}' is already registered.")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, sorted, optionally filtered by a glob ``pattern``."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def create_datasets(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    validation: float = 0.0,
    **kwargs: Any,
) -> Datasets:
    """The train/test datasets of ``name`` (see :func:`create_loaders` for the arguments)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError(
            f"Unknown dataset {name!r}. Registered datasets: {', '.join(list_datasets())}."
        )
    check_int("seed", seed, low=0, high=2**32 - 1)
    if not isinstance(download, bool):
        raise InvalidArgumentError(f"download must be True or False, got {download!r}.", argument="download")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise InvalidArgumentError(f"root must be a folder path, got {type(root).__name__}.", argument="root")
    _check_validation(validation)
    root_path = Path(root if root is not None else os.environ.get("ROBUSTPRUNE_DATA", "data"))
    try:
        ds = _REGISTRY[name](root=root_path, download=download, seed=seed, **kwargs)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise InvalidArgumentError(f"Dataset '{name}': {exc}.") from exc
        raise
    return split_validation(ds, float(validation), seed=seed) if validation else ds


def split_validation(ds: Datasets, fraction: float, *, seed: int = 0) -> Datasets:
    """``ds`` with ``fraction`` of its training examples moved to a validation split (a
    seeded random subset; the test set is untouched)."""
    if not isinstance(ds, Datasets):
        raise InvalidArgumentError(f"split_validation needs the Datasets of create_datasets, got {type(ds).__name__}.",
                                   argument="ds")
    _check_validation(fraction)
    check_int("seed", seed, low=0)
    n = len(ds.train)
    n_val = int(round(fraction * n))
    if not 1 <= n_val < n:
        raise InvalidArgumentError(
            f"validation={fraction:g} of {n} training examples leaves no validation or no "
            "training example; use a fraction between 1/n and 1 - 1/n.",
            argument="validation",
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
    return Datasets(Subset(ds.train, train_idx), ds.test, ds.info, val=Subset(ds.train, val_idx))


def _check_validation(validation: Any) -> None:
    ok = not isinstance(validation, bool) and isinstance(validation, (int, float)) and 0 <= validation < 1
    if not ok:
        raise InvalidArgumentError(
            f"validation is the fraction of the training set held out for validation, in [0, 1), "
            f"got {validation!r}.",
            argument="validation",
        )


def create_loaders(
    name: str,
    *,
    batch_size: int = 128,
    test_batch_size: int | None = None,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    validation: float = 0.0,
    **kwargs: Any,
) -> Loaders:
    """Train and test loaders for a registered dataset.

    Args:
        name: a name from :func:`list_datasets`.
        batch_size: training batch size (the test loader uses ``test_batch_size`` or 2x).
        root: where torchvision datasets live (default ``$ROBUSTPRUNE_DATA`` or ``./data``).
        download: let torchvision download a missing dataset.
        seed: seeds the split (digits), the synthetic data and the training shuffle order.
        num_workers: DataLoader workers; None: :func:`default_num_workers` (0 for
            datasets held in memory such as digits and synthetic, else a few), kept alive
            between epochs when > 0.
        validation: hold out this fraction of the training set as ``loaders.val`` (a
            seeded random subset), e.g. to choose regularizer weights without the test set.
        **kwargs: dataset options, e.g. ``size=32`` for digits or ``shape=(3, 32, 32)`` for
            synthetic.
    """
    check_int("batch_size", batch_size, low=1)
    if test_batch_size is not None:
        check_int("test_batch_size", test_batch_size, low=1, why="or None for 2 x batch_size")
    if num_workers is not None:
        check_int("num_workers", num_workers, low=0, why="0 loads in the main process; None: the default")
    ds = create_datasets(name, root=root, download=download, seed=seed, validation=validation, **kwargs)
    if num_workers is None:
        num_workers = default_num_workers(ds.train)
    generator = torch.Generator().manual_seed(seed)
    keep = num_workers > 0  # workers start once, not every epoch
    train = DataLoader(
        ds.train,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=keep,
        drop_last=False,
    )
    test = DataLoader(
        ds.test,
        batch_size=test_batch_size or 2 * batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=keep,
    )
    val = None if ds.val is None else DataLoader(
        ds.val, batch_size=test_batch_size or 2 * batch_size, shuffle=False, num_workers=num_workers,
        persistent_workers=keep,
    )  # test_batch_size is None or >= 1 here
    return Loaders(train, test, ds.info, val)


#: the most DataLoader workers :func:`default_num_workers` picks
MAX_DEFAULT_WORKERS = 4


def default_num_workers(dataset: Dataset) -> int:
    """DataLoader workers for ``dataset``: 0 when it is held in memory as tensors (digits,
    synthetic: a worker would only add its start-up and the copies between processes),
    else half the CPUs this process may use, at most :data:`MAX_DEFAULT_WORKERS` (the
    other half runs the model: see :mod:`robustprune._threads`)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset):
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() // 2))


def dataset_info(name: str, **kwargs: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset without loading files where it is known statically."""
    static = _STATIC_INFO.get(name)
    if static is not None and not kwargs:
        return static
    return create_datasets(name, **kwargs).info


def dataset_options(name: str) -> list[str] | None:
    """The keyword options the registered dataset ``name`` accepts (``size`` for digits,
    ``shape``... for synthetic); None when the name is unknown or its factory takes
    ``**kwargs`` (then any option may be valid)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        return None
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("root", "download", "seed")]


# --------------------------------------------------------------------------- digits

#: the largest ``size`` of digits (the 8x8 images upsampled to size x size, in memory)
MAX_DIGITS_SIZE = 512
_DIGITS_N = 1797


@register_dataset("digits")
def _digits(
    *, root: Path, download: bool, seed: int, size: int | None = None, test_fraction: float = 0.2
) -> Datasets:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes), values
    scaled from 0..16 to [0, 1], split 80/20 stratified with a fixed seed. ``size`` upsamples
    bilinearly (e.g. 32 for CIFAR-style CNNs)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise InvalidArgumentError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}.",
                                   argument="test_fraction")
    if size is not None:
        check_int("size", size, low=8, high=MAX_DIGITS_SIZE,
                  why=f"the side of the upsampled images; all {_DIGITS_N:,} images are held in memory, "
                      f"{_DIGITS_N * MAX_DIGITS_SIZE**2 * 4 / 2**30:.1f} GiB at {MAX_DIGITS_SIZE}")
    bunch = load_digits()
    n_test = math.ceil(test_fraction * len(bunch.target))
    if n_test < 10 or len(bunch.target) - n_test < 10:  # a stratified split needs each class on both sides
        raise InvalidArgumentError(f"test_fraction={test_fraction:g} puts {n_test} of the {len(bunch.target)} digits in "
                                   "the test set; the stratified split needs each of the 10 classes on each side.",
                                   argument="test_fraction")
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=bunch.target, random_state=seed
    )
    if size is not None:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    train_x = images[torch.as_tensor(idx_train)]
    mean = float(train_x.mean())
    std = float(train_x.std())
    side = size or 8
    info = DatasetInfo("digits", (1, side, side), 10, (mean,), (std,), eps=0.2)
    return Datasets(
        TensorDataset(train_x, labels[torch.as_tensor(idx_train)]),
        TensorDataset(images[torch.as_tensor(idx_test)], labels[torch.as_tensor(idx_test)]),
        info,
    )


# --------------------------------------------------------------------------- synthetic


@register_dataset("synthetic")
def _synthetic(
    *,
    root: Path,
    download: bool,
    seed: int,
    shape: tuple[int, ...] | list[int] = (3, 32, 32),
    num_classes: int = 10,
    n_train: int = 1024,
    n_test: int = 256,
) -> Datasets:
    """Deterministic random images in [0, 1] of any ``shape`` and class count, for speed
    benchmarks and smoke runs. Each class adds its own fixed pattern, so the task is
    learnable (a model can beat chance), but the data carries no meaning."""
    shape = _check_synthetic(shape, num_classes, n_train, n_test)
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand((num_classes, *shape), generator=g) - 0.5

    def make(n: int) -> TensorDataset:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = 0.5 + 0.15 * torch.randn((n, *shape), generator=g) + 0.35 * patterns[y]
        return TensorDataset(x.clamp_(0.0, 1.0), y)

    train, test = make(n_train), make(n_test)
    c = shape[0]
    info = DatasetInfo("synthetic", shape, num_classes, (0.5,) * c, (0.25,) * c)  # type: ignore[arg-type]
    return Datasets(train, test, info)


#: the most input values ``synthetic`` generates (train + test), 2**28 float32 = 1 GiB
MAX_SYNTHETIC_VALUES = 2**28


def _check_synthetic(shape: Any, num_classes: Any, n_train: Any, n_test: Any) -> tuple[int, int, int]:
    ok = (
        isinstance(shape, (tuple, list)) and len(shape) == 3
        and all(not isinstance(s, bool) and isinstance(s, numbers.Integral) and s >= 1 for s in shape)
    )
    if not ok:
        raise InvalidArgumentError(
            f"synthetic shape must be (C, H, W), three positive integers, got {shape!r}.", argument="shape"
        )
    check_int("num_classes", num_classes, low=2)
    check_int("n_train", n_train, low=1)
    check_int("n_test", n_test, low=1)
    shape = tuple(int(s) for s in shape)
    values = (n_train + n_test) * shape[0] * shape[1] * shape[2]
    if values > MAX_SYNTHETIC_VALUES:
        raise InvalidArgumentError(
            f"synthetic shape {shape} with {n_train} + {n_test} examples needs {values:,} values in "
            f"memory (at most {MAX_SYNTHETIC_VALUES:,}, 1 GiB); use fewer or smaller examples.",
            argument="shape",
        )
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- torchvision


_STATIC_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "svhn": DatasetInfo("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), eps=0.3),
}


def _register_torchvision(name: str) -> None:
    @register_dataset(name)
    def factory(*, root: Path, download: bool, seed: int, augment: bool = True) -> Datasets:
        if not isinstance(augment, bool):
            raise InvalidArgumentError(f"augment must be True or False, got {augment!r}.", argument="augment")
        train, test = load_torchvision(name, root, download, augment)
        return Datasets(train, test, _STATIC_INFO[name])

    factory.__doc__ = f"torchvision's {name} from ``root`` (``download=True`` fetches it)."


for _name in ("cifar10", "cifar100", "svhn", "mnist"):
    _register_torchvision(_name)
