"""Shared fixtures: tests are CPU-only, deterministic and fast."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# tests use tiny models: one intra-op thread is fastest and keeps results deterministic
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest (and steadiest) on one thread, and the CI cores are shared;
    a test that changes the thread count (the CLI's --threads) gets it restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    from robustprune.data import create_loaders

    return create_loaders("digits", batch_size=64)
