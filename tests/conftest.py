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


@pytest.fixture(scope="session")
def digits():
    from robustprune.data import create_loaders

    return create_loaders("digits", batch_size=64)
