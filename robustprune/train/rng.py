"""The random state of a :func:`robustprune.train.fit` run: per-rank seeding, and the
capture and restore of every generator a run draws from (torch, CUDA, numpy, python, the
loader's shuffle generators, the attacks' generator), for checkpoints that resume bit-for-bit.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["derive_seed", "seed_everything", "loader_generators", "rng_state", "set_rng_state"]


def derive_seed(seed: int, rank: int, stream: int) -> int:
    """An independent seed for random stream ``stream`` of ``rank`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1)[0])


def seed_everything(
    seed: int, rank: int, device: torch.device, attack_gen: torch.Generator
) -> None:
    """Seed torch (and CUDA), numpy, python and the attacks' generator for ``rank``."""
    torch.default_generator.manual_seed(derive_seed(seed, rank, 0))
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(derive_seed(seed, rank, 0))
    np.random.seed(derive_seed(seed, rank, 1))
    random.seed(derive_seed(seed, rank, 2))
    attack_gen.manual_seed(derive_seed(seed, rank, 3))


def loader_generators(loader: Iterable[Any]) -> list[torch.Generator]:
    """The distinct generators a DataLoader draws its shuffle order and worker seeds from."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def rng_state(
    device: torch.device, loader: Iterable[Any], attack_gen: torch.Generator
) -> dict[str, Any]:
    """Every random state of this process (tensors and plain data: loads with
    ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "loader": [g.get_state() for g in loader_generators(loader)],
        "attack": attack_gen.get_state(),
    }


def set_rng_state(
    state: Mapping[str, Any], device: torch.device, loader: Iterable[Any], attack_gen: torch.Generator
) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    gens = loader_generators(loader)
    if len(gens) == len(state["loader"]):
        for g, s in zip(gens, state["loader"]):
            g.set_state(s.cpu())
    attack_gen.set_state(state["attack"].cpu())
