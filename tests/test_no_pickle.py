"""No load path executes a pickle: crafted files whose ``__reduce__`` would create a marker
file are refused by ``load_pruned``, ``fit`` resume (``checkpoint_dir`` and
``resume_from``), ``robustprune run`` (``[checkpoint]`` and a resumed run's own
checkpoints) and ``eval``/``analyze``/``prune --checkpoint``; the marker never appears."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from badinput import Case, expect_cli_refusal, expect_refusal, tiny_recipe

from robustprune.checkpoint import FORMAT, load_pruned
from robustprune.data import create_loaders
from robustprune.errors import RobustPruneError
from robustprune.models import create_model
from robustprune.recipe import load_recipe
from robustprune.train import fit

RECIPE = tiny_recipe("no-pickle")


class Evil:
    """Unpickled, it would create ``marker`` (builtins.open(marker, "w"))."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (self.marker, "w"))


def _payloads(marker: Path) -> dict[str, Callable[[Path], None]]:
    evil = Evil(marker)
    return {
        "torch-zip-object": lambda p: torch.save(evil, p),
        "torch-zip-in-checkpoint": lambda p: torch.save(
            {"format": FORMAT, "version": 1, "arch": "fcn", "state_dict": evil, "meta": evil}, p
        ),
        "torch-legacy": lambda p: torch.save({"model": evil}, p, _use_new_zipfile_serialization=False),
        "raw-pickle": lambda p: p.write_bytes(pickle.dumps({"format": FORMAT, "x": evil})),
    }


PAYLOADS = list(_payloads(Path("unused")))


@pytest.fixture
def evil_file(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """(a crafted file, the marker its unpickling would create)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    _payloads(marker)[request.param](path)
    assert not marker.exists()
    return path, marker


def test_the_payloads_do_execute_under_plain_pickle(tmp_path: Path) -> None:
    """The check is meaningful: an unguarded loader would create the marker."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


@pytest.fixture(scope="module")
def loaders():
    return create_loaders("digits", batch_size=256)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("fcn", num_classes=10, input_shape=(1, 8, 8), width=8)


def _into(directory: Path, name: str) -> Callable[[Path], Path]:
    def place(path: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        path.replace(target)
        return target

    return place


@pytest.mark.parametrize("evil_file", PAYLOADS, indirect=True)
def test_load_pruned_refuses(evil_file: tuple[Path, Path]) -> None:
    path, marker = evil_file
    with pytest.raises(RobustPruneError):
        load_pruned(path)
    assert not marker.exists()


@pytest.mark.parametrize("evil_file", PAYLOADS, indirect=True)
@pytest.mark.parametrize("how", ["checkpoint_dir", "resume_from"])
def test_fit_resume_refuses_and_leaves_the_model(evil_file: tuple[Path, Path], how: str, loaders, tmp_path: Path) -> None:
    path, marker = evil_file
    if how == "checkpoint_dir":
        _into(tmp_path / "ckpt", "last.pt")(path)
        call = lambda m: fit(m, loaders, 1, device="cpu", progress=False, checkpoint_dir=tmp_path / "ckpt")  # noqa: E731
    else:
        call = lambda m: fit(m, loaders, 1, device="cpu", progress=False, resume_from=path)  # noqa: E731
    expect_refusal(Case(how, call), _model())
    assert not marker.exists()


@pytest.mark.parametrize("evil_file", PAYLOADS, indirect=True)
@pytest.mark.parametrize("command", ["eval", "analyze", "prune"])
def test_cli_checkpoint_refuses(evil_file: tuple[Path, Path], command: str, tmp_path: Path) -> None:
    path, marker = evil_file
    extra = {"eval": [], "analyze": ["--n-examples", "0"], "prune": ["--eps", "0.4", "--out", str(tmp_path / "o.pt")]}
    expect_cli_refusal([command, "--checkpoint", str(path), *extra[command]], "not a loadable|checkpoint")
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("evil_file", PAYLOADS, indirect=True)
def test_run_refuses_a_crafted_recipe_checkpoint(evil_file: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = evil_file
    recipe = tmp_path / "r.toml"
    text = RECIPE.replace("[model]\nname = \"fcn\"\nwidth = 8\n[train]\nepochs = 1\n", "")
    recipe.write_text(f"checkpoint = {str(path)!r}\n{text}", encoding="utf-8")
    expect_cli_refusal(["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-progress"], "checkpoint")
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("evil_file", ["torch-zip-in-checkpoint", "raw-pickle"], indirect=True)
@pytest.mark.parametrize("where", ["checkpoints/seed0/dense.pt", "checkpoints/seed0/train/last.pt"])
def test_run_resume_refuses_a_crafted_file_in_the_run_directory(
    evil_file: tuple[Path, Path], where: str, tmp_path: Path
) -> None:
    path, marker = evil_file
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(load_recipe(recipe).to_toml(), encoding="utf-8")
    _into(run_dir / Path(where).parent, Path(where).name)(path)
    expect_cli_refusal(["run", str(recipe), "--run-dir", str(run_dir), "--resume", "--no-progress"])
    assert not marker.exists()
