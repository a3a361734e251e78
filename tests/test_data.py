"""Dataset registry: [0, 1] inputs, shapes, deterministic splits, real on-disk formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robustprune.data import create_datasets, create_loaders, list_datasets
from robustprune.errors import DatasetNotFoundError, RobustPruneError


def test_registry_lists_every_dataset():
    assert {"digits", "synthetic", "cifar10", "cifar100", "svhn", "mnist"} <= set(list_datasets())


def test_unknown_dataset_names_the_registered_ones():
    with pytest.raises(RobustPruneError, match="digits"):
        create_loaders("imagenet-typo")


@pytest.mark.parametrize("size", [None, 16])
def test_digits_inputs_in_unit_interval_with_shape(size):
    kw = {} if size is None else {"size": size}
    loaders = create_loaders("digits", batch_size=32, **kw)
    side = size or 8
    assert loaders.info.input_shape == (1, side, side)
    x, y = next(iter(loaders.train))
    assert x.shape[1:] == (1, side, side)
    assert x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) <= 9
    n_train, n_test = len(loaders.train.dataset), len(loaders.test.dataset)
    assert n_train + n_test == 1797 and abs(n_test / 1797 - 0.2) < 0.01


def test_digits_split_is_deterministic_and_stratified():
    a = create_datasets("digits", seed=0)
    b = create_datasets("digits", seed=0)
    c = create_datasets("digits", seed=1)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    counts = torch.bincount(a.test.tensors[1], minlength=10).float()
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~36 per class


def test_synthetic_is_deterministic_any_shape():
    a = create_datasets("synthetic", shape=(3, 16, 16), num_classes=5, n_train=64, n_test=16)
    b = create_datasets("synthetic", shape=(3, 16, 16), num_classes=5, n_train=64, n_test=16)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert a.train.tensors[0].shape == (64, 3, 16, 16)
    assert a.train.tensors[0].min() >= 0 and a.train.tensors[0].max() <= 1
    assert int(a.train.tensors[1].max()) < 5


def test_training_shuffle_order_is_seeded():
    first = [next(iter(create_loaders("digits", batch_size=16, seed=3).train))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])


# ----------------------------------------------------------------- torchvision formats


def _write_cifar10(root: Path, n: int = 20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, n: int = 12) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))


def _write_svhn(root: Path, n: int = 10) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # SVHN labels 1..10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


@pytest.mark.parametrize(
    "name,writer,shape",
    [
        ("cifar10", _write_cifar10, (3, 32, 32)),
        ("mnist", _write_mnist, (1, 28, 28)),
        ("svhn", _write_svhn, (3, 32, 32)),
    ],
)
def test_torchvision_loading_from_real_on_disk_format(tmp_path, name, writer, shape):
    writer(tmp_path)
    loaders = create_loaders(name, root=tmp_path, batch_size=4)
    assert loaders.info.input_shape == shape
    for loader in (loaders.train, loaders.test):
        x, y = next(iter(loader))
        assert x.shape[1:] == shape
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
        assert 0 <= int(y.min()) and int(y.max()) <= 9


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist"])
def test_missing_torchvision_dataset_names_root_and_download(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as err:
        create_loaders(name, root=tmp_path / "nowhere")
    message = str(err.value)
    assert "nowhere" in message and "download=True" in message


def test_dataset_options_lists_each_factorys_keywords():
    from robustprune.data import dataset_options

    assert dataset_options("digits") == ["size", "test_fraction"]
    assert dataset_options("synthetic") == ["shape", "num_classes", "n_train", "n_test"]
    assert dataset_options("cifar10") == ["augment"]
    assert dataset_options("imagenet-typo") is None
