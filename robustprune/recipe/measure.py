"""The measurements of a results row: evaluation (clean, AutoAttack, MACs, params, latency)
and, where ``[analysis]`` asks for it, the compressibility analysis.

Robust accuracy is measured at ``[eval] eps`` (the ``robust_accuracy`` column) and at every
``[eval] extra_eps`` budget, with the same attacks, seed and iterations on the same first
``n_examples`` test examples; ``robust_at`` holds them all, keyed by
:func:`robustprune.recipe.sections.budget_key` (``{"0.031": 0.45, "0.0313725": 0.44}``), and
``robust_extra`` the full results of the extra budgets (per attack)."""

from __future__ import annotations

import math
from typing import Any

import torch

from robustprune.analysis import DEFAULT_DELTA, analyze
from robustprune.attacks import robust_accuracy

# the one import of the evaluation module (being renamed robustprune.evaluation)
from robustprune.evaluation import evaluate
from robustprune.recipe.config import Recipe
from robustprune.recipe.sections import budget_key

__all__ = ["evaluation_row", "analysis_report", "analysis_summary"]

#: ``[eval] norm`` -> the norm key of :func:`robustprune.analysis.analyze`
_ANALYSIS_NORM = {"Linf": "inf", "L2": "2"}


def evaluation_row(
    model: Any, r: Recipe, loader: Any, example: Any, *, seed: int, dense_row: dict[str, Any] | None,
    device: Any, progress: bool,
) -> dict[str, Any]:
    """The evaluation columns of a row; ``macs_kept``/``params_kept`` relative to
    ``dense_row`` (the model itself when it is the dense one); ``robust_at`` per budget
    (None without ``eps``)."""
    e = r.eval
    attack = {
        "norm": e.norm, "attacks": "standard" if e.attacks == ("standard",) else e.attacks,
        "n_examples": e.n_examples, "seed": seed, "batch_size": e.batch_size, "n_iter": e.n_iter,
        "progress": progress, "channels_last": e.channels_last, "compile": e.compile,
        "cuda_graphs": e.cuda_graphs,
    }
    result = evaluate(
        model, loader, eps=e.eps, example_inputs=example, latency=e.latency, device=device, **attack,
    )
    extra = {
        budget_key(eps): robust_accuracy(model, loader, eps=eps, device=device, **attack)
        for eps in e.extra_eps
    }
    macs0 = dense_row["macs"] if dense_row else result.macs
    params0 = dense_row["params"] if dense_row else result.params
    robust = result.robust_accuracy
    # robust accuracy is measured on the first n examples: compare it with the clean
    # accuracy on those same examples (clean_accuracy is over the whole test split)
    subset_clean = result.robust.clean_accuracy if result.robust is not None else None
    settings = {
        "norm": e.norm, "eps": e.eps, "attacks": list(e.attacks), "n_iter": e.n_iter,
        "n_clean": result.n,
    }
    if result.robust is not None:
        settings["n"] = result.robust.n
        if result.robust.forward != "eager":
            settings["forward"] = result.robust.forward
    if e.extra_eps:
        settings["extra_eps"] = list(e.extra_eps)
    robust_at = None
    if result.robust is not None:
        robust_at = {budget_key(result.robust.eps): result.robust.robust_accuracy}
        robust_at.update((k, v.robust_accuracy) for k, v in extra.items())
    return {
        "macs": int(result.macs),
        "params": int(result.params),
        "macs_kept": result.macs / macs0 if macs0 else 1.0,
        "params_kept": result.params / params0 if params0 else 1.0,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": robust,
        "robust_clean_accuracy": subset_clean,
        "robust_over_clean": (
            None if robust is None or subset_clean is None
            else (robust / subset_clean if subset_clean > 0 else 0.0)
        ),
        "latency_ms": dict(result.latency_ms or {}),
        "eval_settings": settings,
        "eval": result.to_dict(),
        "robust_at": robust_at,
        "robust_extra": {k: v.to_dict() for k, v in extra.items()},
    }


def analysis_report(model: Any, r: Recipe, test_set: Any, example: Any) -> Any:
    """:func:`robustprune.analysis.analyze` of ``model`` on the first ``[analysis]
    n_examples`` test examples; the budget ``delta`` defaults to ``eval.eps`` for
    ``eval.norm``."""
    a = r.analysis
    xs, ys = [], []
    for i in range(min(a.n_examples, len(test_set))):
        x, y = test_set[i]
        xs.append(x)
        ys.append(int(y))
    batch = (torch.stack(xs), torch.tensor(ys))
    delta: Any = a.delta
    if delta is None and r.eval.eps is not None:
        delta = {**DEFAULT_DELTA, _ANALYSIS_NORM[r.eval.norm]: r.eval.eps}
    return analyze(
        model.eval(), example_inputs=example, data=batch, norms=a.norms,
        conv_norm=a.conv_norm, eps=a.eps, delta=delta, max_samples=a.n_examples,
    )


def analysis_summary(report: Any) -> dict[str, Any]:
    """The few numbers of an analysis report that go into a results row: per-layer means
    over the non-head layers of the spectral ``k/n`` and structure factor ``S_sigma``, and
    per norm the naive Lipschitz bound, the gap bound, the certified fraction and the
    dominant-direction audit accuracy."""

    def mean(values: list[float]) -> float | None:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    body = [row for row in report.rows if not row.is_head]
    out: dict[str, Any] = {
        "k_sigma_fraction": mean([row.spectral.k / row.spectral.n for row in body]),
        "structure_factor_sigma": mean([row.spectral.structure_factor for row in body]),
        "beta_sigma": mean([row.spectral.beta for row in body]),
    }
    for p, bound in report.bounds.items():
        out[f"lipschitz_naive_{p}"] = bound.naive
        out[f"gap_bound_{p}"] = bound.gap
        out[f"certified_{p}"] = bound.certified_fraction
    for p, audit in (report.audit or {}).items():
        out[f"audit_accuracy_{p}"] = audit.accuracy
        out[f"audit_random_accuracy_{p}"] = audit.random_accuracy
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in out.items()}
