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
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from robustprune.errors import DatasetNotFoundError, InvalidArgumentError, UnknownNameError

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
]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: input shape ``(C, H, W)``, classes, channel statistics."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


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
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"Unknown dataset '{name}'. Registered datasets: {', '.join(list_datasets())}."
        )
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
    num_workers: int = 0,
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
        num_workers: DataLoader workers.
        validation: hold out this fraction of the training set as ``loaders.val`` (a
            seeded random subset), e.g. to choose regularizer weights without the test set.
        **kwargs: dataset options, e.g. ``size=32`` for digits or ``shape=(3, 32, 32)`` for
            synthetic.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}.")
    ds = create_datasets(name, root=root, download=download, seed=seed, validation=validation, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        ds.train,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
    )
    test = DataLoader(
        ds.test,
        batch_size=test_batch_size or 2 * batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    val = None if ds.val is None else DataLoader(
        ds.val, batch_size=test_batch_size or 2 * batch_size, shuffle=False, num_workers=num_workers
    )
    return Loaders(train, test, ds.info, val)


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


@register_dataset("digits")
def _digits(
    *, root: Path, download: bool, seed: int, size: int | None = None, test_fraction: float = 0.2
) -> Datasets:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes), values
    scaled from 0..16 to [0, 1], split 80/20 stratified with a fixed seed. ``size`` upsamples
    bilinearly (e.g. 32 for CIFAR-style CNNs)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise InvalidArgumentError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=bunch.target, random_state=seed
    )
    if size is not None:
        if size < 8:
            raise InvalidArgumentError(f"digits size must be >= 8, got {size}.")
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    train_x = images[torch.as_tensor(idx_train)]
    mean = float(train_x.mean())
    std = float(train_x.std())
    side = size or 8
    info = DatasetInfo("digits", (1, side, side), 10, (mean,), (std,))
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
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidArgumentError(f"synthetic shape must be (C, H, W) with positive sizes, got {shape}.")
    if num_classes < 2 or n_train < 1 or n_test < 1:
        raise InvalidArgumentError("synthetic needs num_classes >= 2 and n_train, n_test >= 1.")
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


# --------------------------------------------------------------------------- torchvision


_STATIC_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "svhn": DatasetInfo("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
}


def _torchvision_classes() -> dict[str, type]:
    """torchvision dataset classes whose on-load check tests that the files exist.

    torchvision re-hashes every CIFAR/SVHN file with MD5 on each load; we check presence
    only (downloads are still verified by torchvision against the archive's MD5)."""
    from torchvision import datasets as tvd

    class CIFAR10(tvd.CIFAR10):
        train_list = [[f, None] for f, _ in tvd.CIFAR10.train_list]
        test_list = [[f, None] for f, _ in tvd.CIFAR10.test_list]
        meta = {**tvd.CIFAR10.meta, "md5": None}

    class CIFAR100(tvd.CIFAR100):
        train_list = [[f, None] for f, _ in tvd.CIFAR100.train_list]
        test_list = [[f, None] for f, _ in tvd.CIFAR100.test_list]
        meta = {**tvd.CIFAR100.meta, "md5": None}

    class SVHN(tvd.SVHN):
        def _check_integrity(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))

    return {"cifar10": CIFAR10, "cifar100": CIFAR100, "svhn": SVHN, "mnist": tvd.MNIST}


def _expected_files(name: str, root: Path) -> str:
    return {
        "cifar10": str(root / "cifar-10-batches-py"),
        "cifar100": str(root / "cifar-100-python"),
        "svhn": str(root / "{train,test}_32x32.mat"),
        "mnist": str(root / "MNIST" / "raw"),
    }[name]


def _load_torchvision(name: str, root: Path, download: bool, augment: bool) -> Datasets:
    from torchvision import transforms as T

    info = _STATIC_INFO[name]
    cls = _torchvision_classes()[name]
    to_tensor = T.ToTensor()  # uint8 HxWxC -> float CxHxW in [0, 1]
    if augment and name in ("cifar10", "cifar100"):
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), to_tensor])
    elif augment and name == "svhn":
        train_tf = T.Compose([T.RandomCrop(32, padding=2), to_tensor])
    else:
        train_tf = to_tensor
    try:
        if name == "svhn":
            train = cls(str(root), split="train", transform=train_tf, download=download)
            test = cls(str(root), split="test", transform=to_tensor, download=download)
        else:
            train = cls(str(root), train=True, transform=train_tf, download=download)
            test = cls(str(root), train=False, transform=to_tensor, download=download)
    except RuntimeError as exc:
        if "not found" not in str(exc).lower() and "corrupted" not in str(exc).lower():
            raise
        raise DatasetNotFoundError(
            f"Dataset '{name}' was not found under root '{root}' (looked for "
            f"{_expected_files(name, root)}). Point root= (or data.root in a recipe, or "
            f"$ROBUSTPRUNE_DATA) at the folder that holds it, or pass download=True to let "
            "torchvision fetch it."
        ) from exc
    return Datasets(train, test, info)


def _register_torchvision(name: str) -> None:
    @register_dataset(name)
    def factory(*, root: Path, download: bool, seed: int, augment: bool = True) -> Datasets:
        return _load_torchvision(name, root, download, augment)

    factory.__doc__ = f"torchvision's {name} from ``root`` (``download=True`` fetches it)."


for _name in ("cifar10", "cifar100", "svhn", "mnist"):
    _register_torchvision(_name)
