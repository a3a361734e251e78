"""Robust accuracy under the official AutoAttack attacks (``pyautoattack==0.2.0``).

>>> result = robust_accuracy(model, loaders.test, eps=8 / 255, n_examples=1000)
>>> result.clean_accuracy, result.robust_accuracy, result.per_attack
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustprune import distributed
from robustprune._inputs import (
    BatchValidator,
    check_int,
    check_logits,
    check_materialized,
)
from robustprune._modes import module_modes, restore_modes
from robustprune._progress import bar as progress_bar
from robustprune._progress import interactive
from robustprune._speed import (
    check_cuda_graphs,
    check_speed_flags,
    compile_mode_of,
    fast_path,
    path_label,
)
from robustprune.attacks._ensemble import Ensemble
from robustprune.attacks._state import EvalState, check_state_path, checksum
from robustprune.attacks.batches import num_examples, rebatch
from robustprune.attacks.training import Norm, check_budget, check_budget_for_inputs
from robustprune.errors import InvalidArgumentError

__all__ = [
    "AUTOATTACK_ATTACKS", "STANDARD_ATTACKS", "ATTACKS", "RobustResult", "robust_accuracy",
    "check_robust_arguments",
]

logger = logging.getLogger(__name__)

#: attacks of ``pyautoattack`` (the official AutoAttack code) that the adapter can run
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
#: AutoAttack's ``version="standard"`` ensemble, in its order
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: every name ``robust_accuracy(attacks=...)`` accepts: the single attacks and "standard"
ATTACKS = (*AUTOATTACK_ATTACKS, "standard")


@dataclass(frozen=True)
class RobustResult:
    """Accuracy of a model under an AutoAttack ensemble on ``n`` examples.

    Attributes:
        clean_accuracy: fraction of the ``n`` examples classified correctly.
        robust_accuracy: fraction still classified correctly after every attack
            (a point counts as robust only if no attack in the ensemble fools it).
        per_attack: robust accuracy after each attack in order, cumulative (as AutoAttack
            reports it): ``per_attack[attacks[-1]] == robust_accuracy``.
        norm, eps, attacks, n_iter, seed, batch_size: the settings used.
        n: number of examples evaluated.
        precision: the arithmetic of the model's forwards: ``"fp32"`` always (no autocast:
            results stay comparable across runs), or ``"tf32"`` where the run
            was on CUDA with TF32 matmuls or convolutions enabled
            (``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``).
        forward: the path of the forwards: ``"eager"`` (default), ``"eager, channels-last"``,
            ``"compiled (default)"``... (see ``channels_last``/``compile`` of
            :func:`robust_accuracy`).
    """

    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, float]
    norm: str
    eps: float
    attacks: tuple[str, ...]
    n_iter: int
    seed: int
    n: int
    batch_size: int
    version: str = "custom"
    library: str = "pyautoattack==0.2.0"
    precision: str = "fp32"
    forward: str = "eager"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "per_attack": dict(self.per_attack),
            "norm": self.norm,
            "eps": self.eps,
            "attacks": list(self.attacks),
            "n_iter": self.n_iter,
            "seed": self.seed,
            "n": self.n,
            "batch_size": self.batch_size,
            "version": self.version,
            "library": self.library,
            "precision": self.precision,
        }

    def __str__(self) -> str:
        steps = ", ".join(f"{k} {v:.2%}" for k, v in self.per_attack.items())
        return (
            f"clean {self.clean_accuracy:.2%}, robust {self.robust_accuracy:.2%} "
            f"({self.norm} eps={self.eps:g}, n={self.n}; {steps})"
        )


def robust_accuracy(
    model: nn.Module,
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    *,
    norm: Norm = "Linf",
    eps: float,
    attacks: Sequence[str] | str = ("apgd-ce", "apgd-t"),
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    n_iter: int = 100,
    progress: bool = True,
    state_path: str | os.PathLike[str] | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
    cuda_graphs: bool = False,
) -> RobustResult:
    """Robust accuracy under the official AutoAttack attacks (``pyautoattack==0.2.0``).

    ``robust = (1/n) Σ_i 1[ f(x_i) = y_i  and  f(A_j(x_i)) = y_i for every attack j ]``:
    each attack runs only on the points that are still classified correctly (first the
    clean ones, then those that survived the earlier attacks), so
    ``robust_accuracy ≤ per_attack[...] ≤ clean_accuracy`` by construction.

    The attacks are pyautoattack's own classes, configured as AutoAttack's
    ``version="standard"`` configures them (APGD-CE: 1 restart; APGD-T and FAB-T: 1 restart
    and ``min(9, C-1)`` target classes; Square: 5,000 queries), with ``seed`` passed to
    every attack of every batch, as ``AutoAttack.run_standard_evaluation`` does. The data
    is cut into batches of exactly ``batch_size`` examples in order, and every batch is
    attacked by the whole ensemble before the next one; the result therefore does not
    depend on how ``data`` was batched or how many processes share the work.

    The model is put in eval mode (its previous mode is restored afterwards), moved to
    ``device`` and run in fp32 (autocast disabled); the global RNG (CPU and CUDA) is
    restored afterwards, since the attacks reseed it. Under ``torchrun`` the batches are
    shared round-robin between the ranks and the counts are summed, so every rank returns
    the same result.

    Args:
        model: maps inputs in [0, 1] to logits (a DDP wrapper is unwrapped).
        data: a DataLoader (or any iterable of ``(x, y)`` batches), or a tuple of tensors
            ``(x, y)``. Use an unshuffled loader so that ``n_examples`` picks a fixed subset.
        norm: ``"Linf"`` or ``"L2"``.
        eps: the budget in input space, e.g. 8/255 (CIFAR Linf), 0.5 (L2), 0.3 (MNIST).
        attacks: names from :data:`AUTOATTACK_ATTACKS` in the order to run them, or
            ``"standard"`` for :data:`STANDARD_ATTACKS`.
        n_examples: evaluate the first ``n_examples`` only (default: all of ``data``).
        batch_size: examples per attack batch.
        seed: the attacks' seed.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        n_iter: iterations of the APGD and FAB attacks (AutoAttack uses 100).
        progress: a tqdm bar over batches (rank 0 only, on a terminal).
        state_path: a JSON file that records the counts of every finished batch (written
            atomically by rank 0); a later call with the same settings and model skips the
            batches it lists, so an interrupted evaluation resumes where it stopped.
        channels_last, compile, cuda_graphs: the speed path of the attacks' forwards and
            backwards (off by default): the model's 4-D weights and the inputs in the
            channels-last memory format (the weights are put back afterwards),
            ``torch.compile`` (True or a mode of :data:`robustprune._speed.COMPILE_MODES`),
            CUDA-graph replay (CUDA only; compile mode "reduce-overhead"). The arithmetic
            stays fp32 (or TF32, see ``precision``), but other kernels change the last bits of
            the logits, so a point on the decision boundary can flip: compare results made on
            the same path (``RobustResult.forward`` records it).
    """
    names, version = check_robust_arguments(
        eps=eps, norm=norm, attacks=attacks, n_examples=n_examples, batch_size=batch_size,
        seed=seed, n_iter=n_iter, state_path=state_path, channels_last=channels_last,
        compile=compile, cuda_graphs=cuda_graphs,
    )
    dev = distributed.resolve_device(device)
    check_cuda_graphs(cuda_graphs, dev, "robust_accuracy")
    ctx = distributed.setup(dev)
    net = distributed.unwrap(model)
    check_materialized(net, "robust_accuracy")
    _check_fp32(net)
    _check_order(data, ctx)
    run = _Run(names, norm, float(eps), seed, n_iter, batch_size, n_examples, dev, channels_last,
               compile_mode_of(compile, cuda_graphs))
    modes = module_modes(net)
    bar = None
    try:
        net.eval().to(dev)
        state = EvalState(state_path, run.state_settings(net), ctx)
        bar = _progress_bar(data, batch_size, n_examples, enabled=progress and ctx.is_main)
        with fast_path(net, run.channels_last, run.compile_mode) as forward:
            counts = _attack_batches(forward, data, run, state, ctx, bar)
    finally:
        if bar is not None:
            bar.close()
        restore_modes(modes)
    if ctx.is_main:
        counts += state.resumed_counts(len(counts))
    return _result(distributed.sum_over_ranks(counts, ctx, dev), run, version)


def check_robust_arguments(
    *, eps: Any, norm: Any, attacks: Any, n_examples: Any, batch_size: Any, seed: Any, n_iter: Any,
    state_path: Any = None, channels_last: Any = False, compile: Any = False, cuda_graphs: Any = False,
) -> tuple[tuple[str, ...], str]:
    """Refuse bad settings of :func:`robust_accuracy` before anything runs (also called by
    :func:`robustprune.evaluation.evaluate` before its clean pass); returns the attack
    names and the AutoAttack version they make up."""
    names, version = _resolve_attacks(attacks)
    check_budget(eps, norm, 0)
    check_int("batch_size", batch_size, low=1)
    if n_examples is not None:
        check_int("n_examples", n_examples, low=1, why="or None for every example")
    check_int("n_iter", n_iter, low=1)
    check_int("seed", seed, low=0)
    check_state_path(state_path)
    check_speed_flags(channels_last, compile, cuda_graphs)
    return names, version


@dataclass(frozen=True)
class _Run:
    """The settings of one :func:`robust_accuracy` call."""

    names: tuple[str, ...]
    norm: str
    eps: float
    seed: int
    n_iter: int
    batch_size: int
    n_examples: int | None
    device: torch.device
    channels_last: bool = False
    compile_mode: str | None = None

    def state_settings(self, net: nn.Module) -> dict[str, Any]:
        """What a state file must match to be resumed (the model by its checksum)."""
        return {
            "norm": self.norm, "eps": self.eps, "attacks": list(self.names), "n_iter": self.n_iter,
            "seed": self.seed, "batch_size": self.batch_size, "n_examples": self.n_examples,
            "model": checksum(net),
        }


def _attack_batches(
    net: nn.Module, data: Any, run: _Run, state: EvalState, ctx: distributed.DistContext, bar: Any
) -> torch.Tensor:
    """This rank's summed counts ``[n, clean correct, robust after attack 1, ..., k]`` over
    the batches it owns that ``state`` does not list as done (the global RNG isolated)."""
    dev = run.device
    counts = torch.zeros(2 + len(run.names), dtype=torch.float64)
    cuda_devices = [dev] if dev.type == "cuda" else []
    ensemble: Ensemble | None = None
    check = BatchValidator("robust_accuracy's data")
    with torch.random.fork_rng(devices=cuda_devices), torch.autocast(dev.type, enabled=False):
        for index, (x, y) in enumerate(rebatch(data, run.batch_size, run.n_examples, check=check)):
            if bar is not None:
                bar.update(1)
            if index % ctx.world_size == ctx.rank and index not in state.done:
                x = x.to(dev, torch.float32, non_blocking=True)
                if run.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(dev, torch.long, non_blocking=True)
                if ensemble is None:
                    check_budget_for_inputs(run.eps, run.norm, x.shape[1:])
                    ensemble = Ensemble(net, run.names, norm=run.norm, eps=run.eps, seed=run.seed,
                                        n_iter=run.n_iter, device=dev, x=x)
                    logits, ensemble.first_logits = ensemble.first_logits, None
                    check.set_classes(ensemble.classes)
                else:
                    with torch.no_grad():
                        logits = net(x)
                    check_logits(logits, x.shape[0], where=f"evaluation batch {index + 1}")
                batch_counts = ensemble.run(x, y, logits)
                counts += batch_counts
                state.record(index, batch_counts)
            if (index + 1) % ctx.world_size == 0:
                state.sync()
        state.sync()
    return counts


def _result(counts: torch.Tensor, run: _Run, version: str) -> RobustResult:
    """The :class:`RobustResult` of the counts summed over every batch and rank."""
    n = int(counts[0].item())
    if n == 0:
        raise InvalidArgumentError("robust_accuracy got no examples; check data and n_examples.")
    per_attack = {name: float(counts[2 + j] / n) for j, name in enumerate(run.names)}
    clean = float(counts[1] / n)
    robust = per_attack[run.names[-1]]
    assert robust <= clean, "robust accuracy exceeds clean accuracy"
    return RobustResult(
        clean_accuracy=clean, robust_accuracy=robust, per_attack=per_attack, norm=run.norm,
        eps=run.eps, attacks=run.names, n_iter=run.n_iter, seed=run.seed, n=n,
        batch_size=run.batch_size, version=version, precision=float_precision(run.device),
        forward=path_label(run.channels_last, run.compile_mode),
    )


def float_precision(device: torch.device) -> str:
    """``"tf32"`` on CUDA with TF32 enabled for matmuls or cuDNN convolutions, else ``"fp32"``."""
    if torch.device(device).type != "cuda":
        return "fp32"
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return "tf32" if tf32 else "fp32"


def _resolve_attacks(attacks: Sequence[str] | str) -> tuple[tuple[str, ...], str]:
    if isinstance(attacks, str):
        if attacks == "standard":
            return STANDARD_ATTACKS, "standard"
        attacks = (attacks,)
    if not isinstance(attacks, (list, tuple)):
        raise InvalidArgumentError(
            f"attacks must be a list of attack names or 'standard', got {attacks!r}.", argument="attacks"
        )
    names = tuple(attacks)
    unknown = [a for a in names if a not in AUTOATTACK_ATTACKS]
    if unknown or not names:
        raise InvalidArgumentError(
            f"Unknown attack(s) {unknown or '(none given)'}; choose from "
            f"{', '.join(AUTOATTACK_ATTACKS)} or attacks='standard'."
        )
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"attacks lists an attack twice: {list(names)}.")
    return names, "standard" if names == STANDARD_ATTACKS else "custom"


def _check_fp32(model: nn.Module) -> None:
    low = {p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    if low:
        raise InvalidArgumentError(
            f"robust_accuracy evaluates in fp32 but the model has {sorted(map(str, low))} "
            "parameters; call model.float() first."
        )


def _check_order(data: Any, ctx: distributed.DistContext) -> None:
    """Refuse a shuffled loader under torchrun; warn about one in a single process."""
    shuffled = isinstance(getattr(data, "sampler", None), torch.utils.data.RandomSampler)
    if ctx.distributed and shuffled:
        raise InvalidArgumentError(
            "robust_accuracy under torchrun needs an unshuffled loader (every rank must see "
            "the same examples in the same order); pass the test loader or shuffle=False."
        )
    if shuffled:
        logger.warning("robust_accuracy got a shuffled loader: the evaluated subset changes per run.")


def _progress_bar(data: Any, batch_size: int, n_examples: int | None, enabled: bool) -> Any:
    if not enabled or not interactive():  # off a terminal: no bar (the caller's lines tell the story)
        return None
    total = num_examples(data)
    if n_examples is not None:
        total = n_examples if total is None else min(total, n_examples)
    batches = None if total is None else math.ceil(total / batch_size)
    return progress_bar(total=batches, desc="robust accuracy", unit="batch", leave=False)
