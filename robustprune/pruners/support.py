"""Which models the pruners can handle: the checks run before anything is traced or changed.

:func:`check_prunable_model` refuses, with a :class:`ModelNotSupportedError` that says what
to do, models whose parameters live on the meta device (no values to score or keep),
channel pruning of recurrent layers torch-pruning 1.6.1 has no rule for (``nn.GRU``,
``nn.RNN``) or of torchvision's shifted-window (Swin) attention, whose dependency graph
torch-pruning enumerates without bound, and channel pruning of tied weights (one Parameter shared by two modules:
torch-pruning resizes each module on its own and would silently break the tie).
:func:`tied_parameters` lists the ties; :func:`torch_pruning_failures` turns any exception
escaping torch-pruning while planning into a :class:`ModelNotSupportedError` naming the
model's unusual layers, so no raw exception reaches the caller.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator

from torch import nn

from robustprune.errors import ModelNotSupportedError, RobustPruneError
from robustprune.pruners._checks import first_line

__all__ = ["check_prunable_model", "tied_parameters", "torch_pruning_failures", "warn_nothing_prunable"]

#: recurrent layers without a torch-pruning 1.6.1 rule (its LSTM rule exists)
_NO_RULE: tuple[type[nn.Module], ...] = (nn.GRU, nn.RNN, nn.GRUCell, nn.RNNCell, nn.LSTMCell)


#: modules whose dependency groups torch-pruning 1.6.1 enumerates without bound (by class
#: name: torchvision's Swin attention), refused before tracing
_UNBOUNDED = frozenset({"ShiftedWindowAttention", "ShiftedWindowAttentionV2"})


def check_prunable_model(model: nn.Module, *, channels: bool) -> None:
    """Refuse a model the pruner cannot handle (see the module docstring); ``channels``:
    the checks of channel pruning (recurrent layers, tied weights) apply too."""
    meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if meta:
        raise ModelNotSupportedError(
            f"The model's tensors are on the meta device (e.g. '{meta[0]}'): they have shapes but no "
            "values, so there is nothing to score or keep. Materialize it first, e.g. "
            "model.to_empty(device='cpu') then model.load_state_dict(...)."
        )
    if not channels:
        return
    for name, m in model.named_modules():
        if isinstance(m, _NO_RULE):
            raise ModelNotSupportedError(
                f"Cannot channel-prune '{name}' ({type(m).__name__}): torch-pruning 1.6.1 has no rule "
                "for this recurrent layer (nn.LSTM is supported). Use method='spectral', which only "
                "factorizes Linear and Conv2d layers, or replace the layer by an nn.LSTM."
            )
        if type(m).__name__ in _UNBOUNDED:
            raise ModelNotSupportedError(
                f"Cannot channel-prune '{name}' ({type(m).__name__}): torch-pruning 1.6.1's dependency "
                "graph of shifted-window attention grows without bound (it exhausts memory). Use "
                "method='spectral', or prune a model without Swin blocks."
            )
    ties = tied_parameters(model)
    if ties:
        names = ties[0]
        raise ModelNotSupportedError(
            f"The model has tied weights ({' is '.join(names)}): channel pruning resizes each "
            "module on its own and would break the tie. Untie them before pruning (e.g. "
            f"model.{names[1]} = nn.Parameter(model.{names[0]}.detach().clone())), or use "
            "method='spectral', which keeps tied layers dense."
        )


def tied_parameters(model: nn.Module) -> list[tuple[str, ...]]:
    """The names of every Parameter shared by two or more distinct modules (one tuple per
    shared Parameter; a module registered twice is not a tie)."""
    owners: dict[int, dict[int, str]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), {}).setdefault(id(m), f"{mname}.{pname}" if mname else pname)
    return [tuple(by_module.values()) for by_module in owners.values() if len(by_module) > 1]


def warn_nothing_prunable(model: nn.Module) -> None:
    """Warn (``UserWarning``) that ``model`` has no prunable layer: the report is empty."""
    warnings.warn(
        f"{type(model).__name__} has no prunable layer (every Linear/Conv2d is ignored, is the "
        "classifier head, or there is none): nothing was pruned.",
        UserWarning, stacklevel=4,
    )


@contextlib.contextmanager
def torch_pruning_failures(model: nn.Module) -> Iterator[None]:
    """Turn an exception escaping torch-pruning into a :class:`ModelNotSupportedError`
    (robustprune's own errors pass through)."""
    try:
        yield
    except RobustPruneError:
        raise
    except Exception as exc:
        kinds = sorted({type(m).__name__ for m in model.modules() if not isinstance(m, (nn.Sequential, nn.ModuleList))})
        raise ModelNotSupportedError(
            f"torch-pruning cannot plan the pruning of {type(model).__name__} ({type(exc).__name__}: "
            f"{first_line(exc)}). The model was left unchanged. Its layer types: {', '.join(kinds[:12])}"
            f"{', ...' if len(kinds) > 12 else ''}; exclude the unusual ones with ignored_layers=[...]."
        ) from exc
