"""The job graph of a recipe: every model a run produces, in execution order."""

from __future__ import annotations

from dataclasses import dataclass

from robustprune.recipe.config import PruneConfig, Recipe
from robustprune.recipe.parse import variants

__all__ = ["Job", "plan_jobs", "describe_plan"]


@dataclass(frozen=True, kw_only=True)
class Job:
    """One model of the plan: the dense model or one pruning setting."""

    id: str
    order: int
    variant: str
    variant_index: int
    seed: int
    label: str
    method: str
    key: str  # ASCII setting key, part of the id ("eps=0.05", "match=epsilon:eps=0.05")
    setting: str  # display form ("ε=0.05", "matched to epsilon ε=0.05")
    params: dict[str, float]  # eps / ratio / target_macs
    match: str | None = None  # id of the job whose MACs this one is solved to (scratch: whose widths)
    entry: PruneConfig | None = None
    compare_key: str = "dense"  # jobs of one (variant, seed) with equal keys share a MACs target
    reference: str | None = None  # label of the default-pipeline entry this job is compared with
    scratch: str | None = None  # label of the scratch entry this job is compared with


def plan_jobs(recipe: Recipe) -> list[Job]:
    """Every model the recipe produces, in execution order: per variant and seed the dense
    model, then each [[prune]] entry's settings (entries with ``match`` after the entry
    they match)."""
    jobs: list[Job] = []
    all_variants = variants(recipe)
    for vi, (vname, vrecipe) in enumerate(all_variants):
        vtag = f"v{vi}/" if len(all_variants) > 1 else ""
        entries = [e for e in vrecipe.prune if e.match is None] + [
            e for e in vrecipe.prune if e.match is not None
        ]
        compare = _comparisons(vrecipe)
        for seed in recipe.seeds:
            base = f"{vtag}seed{seed}"
            dense = Job(id=f"{base}/dense", order=0, variant=vname, variant_index=vi, seed=seed,
                        label="dense", method="dense", key="-", setting="–", params={})
            jobs.append(dense)
            for entry in entries:
                jobs += _entry_jobs(entry, jobs, base, dense, compare[entry.label])
    return jobs


def describe_plan(recipe: Recipe) -> str:
    """A readable list of the models a run of ``recipe`` produces."""
    jobs = plan_jobs(recipe)
    lines = [f"Plan: {len(jobs)} models ({len(recipe.seeds)} seed(s), {len(variants(recipe))} variant(s))"]
    for job in jobs:
        lines.append(f"  {job.id}  [{job.method}] {job.setting}")
    return "\n".join(lines)


def _comparisons(recipe: Recipe) -> dict[str, tuple[str | None, str | None]]:
    """Per entry label, the labels of its reference and scratch entries (None: none): the
    entry's own, else ``[compare]``'s, else the first fixed one-shot entry without its own
    finetune or regularizers, and the first scratch entry."""
    default_ref = recipe.compare.reference or next(
        (e.label for e in recipe.prune if e.method == "fixed" and e.kind == "one-shot"
         and not e.finetune and not e.regularizers), None)
    default_scratch = recipe.compare.scratch or next(
        (e.label for e in recipe.prune if e.method == "scratch"), None)
    return {e.label: (e.reference or default_ref, e.scratch or default_scratch) for e in recipe.prune}


def _entry_jobs(
    entry: PruneConfig, jobs: list[Job], base: str, dense: Job, compare: tuple[str | None, str | None]
) -> list[Job]:
    """The jobs of one [[prune]] entry for the (variant, seed) of ``dense``: one per
    explicit setting, or one per model of the matched entry (already in ``jobs``)."""
    mine = [j for j in jobs if j.variant_index == dense.variant_index and j.seed == dense.seed]
    common = {"variant": dense.variant, "variant_index": dense.variant_index, "seed": dense.seed,
              "label": entry.label, "method": entry.method, "entry": entry,
              "reference": compare[0], "scratch": compare[1]}
    out: list[Job] = []
    if entry.match is None:
        for setting in entry.settings():
            ((name, value),) = setting.items()
            key = f"{name}={value:g}"
            compare_key = key if name == "target_macs" else f"{entry.label}/{key}"
            out.append(Job(id=f"{base}/{entry.label}/{key}", order=len(mine) + len(out), key=key,
                           setting=_display_setting(name, value), params=dict(setting),
                           compare_key=compare_key, **common))
        return out
    verb = "widths of" if entry.method == "scratch" else "matched to"
    for target in [j for j in mine if j.label == entry.match]:
        key = f"match={target.label}:{target.key}"
        out.append(Job(id=f"{base}/{entry.label}/{key}", order=len(mine) + len(out), key=key,
                       setting=f"{verb} {target.label} {target.setting}", params={},
                       match=target.id, compare_key=target.compare_key, **common))
    return out


def _display_setting(name: str, value: float) -> str:
    return {"eps": f"ε={value:g}", "ratio": f"ratio={value:g}", "target_macs": f"MACs={value:.0%}"}[name]
