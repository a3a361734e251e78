"""The harness of the bad-input suites (``tests/test_bad_inputs_*.py``).

A refused call must raise a :class:`~robustprune.errors.RobustPruneError` *and* leave the
model exactly as it was: the same state_dict values, the same parameter objects, every
module's train/eval mode, every ``requires_grad`` flag, every hook, every ``.grad`` and the
pruning history. A refused command line must exit non-zero with one line on stderr and no
traceback. Each suite is a table: one case per line.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from robustprune.errors import RobustPruneError

__all__ = ["Case", "Snapshot", "snapshot", "assert_unchanged", "expect_refusal", "run_cli", "expect_cli_refusal"]


@dataclass(frozen=True)
class Case:
    """One bad input: an id, the call (``fn(model) -> Any``), and a regex the message must
    match (None: any RobustPruneError)."""

    id: str
    call: Callable[[nn.Module], Any]
    match: str | None = None

    def __repr__(self) -> str:  # pytest ids
        return self.id


@dataclass(frozen=True)
class Snapshot:
    state: dict[str, torch.Tensor]
    params: tuple[tuple[str, int], ...]
    modes: tuple[tuple[str, bool], ...]
    requires_grad: tuple[tuple[str, bool], ...]
    grads: dict[str, torch.Tensor | None]
    hooks: tuple[tuple[str, int, int, int, int], ...]
    history: Any


def snapshot(model: nn.Module) -> Snapshot:
    """Everything a refused call must not change."""
    named = list(model.named_parameters(remove_duplicate=False))
    return Snapshot(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        params=tuple((n, id(p)) for n, p in named),
        modes=tuple((n, m.training) for n, m in model.named_modules()),
        requires_grad=tuple((n, p.requires_grad) for n, p in named),
        grads={n: None if p.grad is None else p.grad.detach().clone() for n, p in named},
        hooks=tuple(
            (n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(getattr(m, "_backward_pre_hooks", {})))
            for n, m in model.named_modules()
        ),
        history=[dict(s) for s in getattr(model, "robustprune_history", []) or []],
    )


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    after = snapshot(model)
    assert after.params == before.params, "parameter objects were replaced"
    assert after.state.keys() == before.state.keys(), "the state_dict's keys changed"
    for k, v in before.state.items():
        assert after.state[k].shape == v.shape, f"{k} changed shape"
        assert v.is_meta or torch.equal(after.state[k], v), f"{k} changed"
    assert after.modes == before.modes, "a module's train/eval mode changed"
    assert after.requires_grad == before.requires_grad, "requires_grad flags changed"
    assert after.hooks == before.hooks, "hooks were added or removed"
    for k, g in before.grads.items():
        now = after.grads[k]
        assert (g is None) == (now is None) and (g is None or g.is_meta or torch.equal(g, now)), f"{k}.grad changed"
    assert after.history == before.history, "the pruning history changed"


def expect_refusal(case: Case, model: nn.Module) -> RobustPruneError:
    """Run the case on ``model``: a RobustPruneError (matching ``case.match``), model unchanged."""
    before = snapshot(model)
    with pytest.raises(RobustPruneError, match=case.match) as info:
        case.call(model)
    assert_unchanged(model, before)
    return info.value


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``robustprune`` in-process: (exit code, stdout, stderr)."""
    from robustprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def expect_cli_refusal(argv: list[str], match: str | None = None) -> str:
    """A non-zero exit, a ``robustprune: error:`` line (not an internal error), no traceback."""
    code, _out, err = run_cli(argv)
    assert code != 0, f"{argv} exited 0"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("robustprune: ") or ln.startswith("usage:")]
    assert lines, err
    error = [ln for ln in err.splitlines() if ln.startswith("robustprune: error:") or "error:" in ln]
    assert error and "internal error" not in err, err
    if match is not None:
        import re

        assert re.search(match, err), err
    return err


def tiny_recipe(name: str, output: str | None = None) -> str:
    """The smallest runnable recipe (digits, a width-8 fcn, one epoch, one pruned model, 8
    attacked examples) that the CLI suites run and corrupt; ``output`` sets its runs folder."""
    head = f"name = {json.dumps(name)}\n" + (f"output = {json.dumps(output)}\n" if output is not None else "")
    return head + """seeds = [0]
[data]
name = "digits"
[model]
name = "fcn"
width = 8
[train]
epochs = 1
[[prune]]
method = "epsilon"
eps = [0.4]
[eval]
n_examples = 8
latency = false
"""
