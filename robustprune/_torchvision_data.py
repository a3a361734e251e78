"""torchvision's datasets for :mod:`robustprune.data` (cifar10, cifar100, svhn, mnist): a
presence check instead of torchvision's MD5 re-hash on every load, and clear errors for
missing files and failed downloads (an offline machine)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from robustprune.errors import DatasetNotFoundError

__all__ = ["load_torchvision"]

_CLASS_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN", "mnist": "MNIST"}


def load_torchvision(name: str, root: Path, download: bool, augment: bool) -> tuple[Any, Any]:
    """The ``(train, test)`` datasets of torchvision's ``name`` under ``root`` (inputs in
    [0, 1]; ``augment``: random crops, and flips for CIFAR); missing files and failed
    downloads raise :class:`~robustprune.errors.DatasetNotFoundError` saying what to do."""
    from torchvision import transforms as T

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
    except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
        missing = "not found" in str(exc).lower() or "corrupted" in str(exc).lower()
        if download and not missing:
            raise DatasetNotFoundError(
                f"Could not download dataset '{name}' ({type(exc).__name__}: {exc}): this machine "
                "seems to be offline or the download server is unreachable. Download it on a "
                f"machine with internet access (e.g. torchvision.datasets.{_CLASS_NAMES[name]}"
                f"(root, download=True)) and copy the files to {_expected_files(name, root)}, "
                "then run with download=False (data.download = false in a recipe)."
            ) from exc
        if not missing:
            raise
        raise DatasetNotFoundError(
            f"Dataset '{name}' was not found under root '{root}' (looked for "
            f"{_expected_files(name, root)}). Point root= (or data.root in a recipe, or "
            f"$ROBUSTPRUNE_DATA) at the folder that holds it, or pass download=True to let "
            "torchvision fetch it."
        ) from exc
    return train, test


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
