"""Running a recipe: per job, the dense model (trained once per variant and seed, or a
checkpoint), pruning, finetuning, evaluation and analysis; one results row per job."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from robustprune import distributed, train
from robustprune._inputs import resolve_example_inputs
from robustprune.checkpoint import load_pruned, save_pruned
from robustprune.data import Loaders, create_datasets
from robustprune.errors import RobustPruneError
from robustprune.models import create_model
from robustprune.pruners import prune
from robustprune.recipe.config import FinetuneConfig, Recipe, RegularizerSpec, TrainConfig
from robustprune.recipe.measure import analysis_report, analysis_summary, evaluation_row
from robustprune.recipe.parse import variants
from robustprune.recipe.plan import Job, plan_jobs
from robustprune.recipe.preflight import preflight
from robustprune.recipe.rundir import RunDir, json_default, resolve_run_dir, slug

__all__ = ["RunResult", "run_recipe"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_recipe` produced: the run directory, every row of
    ``results.jsonl`` and the summary markdown. ``is_main`` is False on the non-zero ranks
    of a ``torchrun`` job (they write nothing)."""

    run_dir: Path
    rows: tuple[dict[str, Any], ...]
    summary: str
    is_main: bool = True


def run_recipe(
    recipe: Recipe,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> RunResult:
    """Run a recipe and write its results.

    Per variant (``[sweep]`` combination) and seed: train the dense model (or load
    ``[checkpoint]``), evaluate it; then for every ``[[prune]]`` entry and setting prune a
    copy (``match`` entries: solved with ``target_macs`` = the MACs fraction the matched
    model reached), finetune it, evaluate it (clean, AutoAttack, MACs, params, latency).
    Every model is evaluated as reloaded from its saved checkpoint, so an interrupted run
    continued with ``resume=True`` gives the same numbers as an uninterrupted one.

    Writes ``<output>/<name>/<YYYYmmdd-HHMMSS>/`` (or ``run_dir``): ``config.toml`` (the
    resolved recipe), ``results.jsonl`` (one row per model, appended as each finishes),
    ``summary.md`` and ``pareto.png`` (see :mod:`robustprune.report`), ``checkpoints/``
    (``save_pruned`` files) and ``analysis/`` (when ``[analysis]`` asks for it).

    Args:
        recipe: a validated recipe (:func:`~robustprune.recipe.load_recipe`).
        run_dir: the directory to write; default a new timestamped one.
        resume: continue ``run_dir`` or, without it, the latest run of this recipe: rows in
            ``results.jsonl`` are kept, unfinished training resumes from its epoch
            checkpoint. The resolved recipe must equal the run's ``config.toml``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        progress: tqdm bars for training and attacks.

    Under ``torchrun`` every rank runs the same plan (training and attacks are shared
    between the ranks); rank 0 alone writes files.
    """
    dev = distributed.resolve_device(device)
    ctx = distributed.setup(dev)
    jobs = plan_jobs(recipe)
    by_name = dict(variants(recipe))
    preflight(by_name.values())
    out = resolve_run_dir(recipe, run_dir, resume, ctx)
    state = RunDir(out, ctx.is_main)
    state.prepare(recipe, resume)
    distributed.barrier(ctx)
    done = {row["id"]: row for row in state.read_rows()} if resume else {}
    if done:
        logger.info("resuming %s: %d of %d models already finished", out, len(done), len(jobs))
    else:
        logger.info("run %s: %d models", out, len(jobs))
    runner = _Runner(by_name, state, device=dev, ctx=ctx, progress=progress)
    started = time.perf_counter()
    finished = 0
    for i, job in enumerate(jobs):
        if job.id in done:
            runner.rows[job.id] = done[job.id]
            continue
        t0 = time.perf_counter()
        row = runner.run_job(job)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        state.append_row(row)
        runner.rows[job.id] = row
        finished += 1
        logger.info("[%d/%d] %s", i + 1, len(jobs), _row_line(row))
        if i + 1 < len(jobs) and jobs[i + 1].seed != job.seed:
            state.render()  # a partial summary after every seed
    distributed.barrier(ctx)
    rows = tuple(state.read_rows())
    summary = state.render()
    logger.info("finished %d models in %.1f s", finished, time.perf_counter() - started)
    return RunResult(out, rows, summary, ctx.is_main)


def _row_line(row: dict[str, Any]) -> str:
    robust = row.get("robust_accuracy")
    return (
        f"{row['id']}: MACs {row['macs_kept']:.1%}, params {row['params_kept']:.1%}, "
        f"clean {row['clean_accuracy']:.1%}"
        + (f", robust {robust:.1%}" if robust is not None else "")
        + f" ({row.get('seconds', 0):.1f} s)"
    )


class _Runner:
    """Executes :class:`~robustprune.recipe.plan.Job` s: holds the data of the current
    variant and the dense model of the current (variant, seed), both rebuilt when those
    change, and the rows finished so far (``rows``: job id -> row)."""

    def __init__(
        self, variants: Mapping[str, Recipe], state: RunDir, *, device: Any, ctx: Any, progress: bool
    ) -> None:
        self.variants = variants
        self.state = state
        self.device = device
        self.ctx = ctx
        self.progress = progress
        self.rows: dict[str, dict[str, Any]] = {}
        self._data_key: str | None = None
        self._datasets: Any = None
        self._dense_key: tuple[int, int] | None = None
        self._dense: Any = None

    def run_job(self, job: Job) -> dict[str, Any]:
        """Build, measure and describe one model: its results row."""
        r = self.variants[job.variant]
        t0 = time.perf_counter()
        loaders = self._loaders(r, job.seed)
        dense = self._dense_model(job, r, loaders)
        # one test example, copied (the dataset's own tensor is never handed out)
        example = resolve_example_inputs(dense, data_example=self._datasets.test[0][0].unsqueeze(0).clone())
        timing: dict[str, float] = {"dense": time.perf_counter() - t0}
        path = self._checkpoint_path(job)
        row: dict[str, Any] = {
            "id": job.id, "variant": job.variant, "variant_index": job.variant_index, "seed": job.seed,
            "order": job.order, "label": job.label, "method": job.method, "setting": job.setting,
            "setting_key": job.key, "settings": dict(job.params),
        }
        if job.label == "dense":
            model = dense
            row.update(prune=None, fit=None, pruned_macs_kept=1.0)
        else:
            model, update = self._pruned_model(job, loaders, dense, example, timing)
            row.update(update)
        t0 = time.perf_counter()
        dense_row = self.rows.get(job.id.rsplit("/", 2)[0] + "/dense") if job.label != "dense" else None
        row.update(evaluation_row(
            model, r, loaders.test, example, seed=job.seed, dense_row=dense_row,
            device=self.device, progress=self.progress,
        ))
        timing["eval"] = time.perf_counter() - t0
        row["checkpoint"] = str(path)
        if r.analysis.models == "all" or (r.analysis.models == "dense" and job.label == "dense"):
            t0 = time.perf_counter()
            row["analysis"] = self._analyze(model, r, example, job)
            timing["analysis"] = time.perf_counter() - t0
        row["timing_s"] = {k: round(v, 2) for k, v in timing.items()}
        return row

    # ------------------------------------------------------------------ paths

    def _seed_dir(self, job: Job) -> Path:
        vtag = f"v{job.variant_index}" if len(self.variants) > 1 else ""
        return self.state.dir / "checkpoints" / vtag / f"seed{job.seed}"

    def _checkpoint_path(self, job: Job) -> Path:
        if job.label == "dense":
            r = self.variants[job.variant]
            if r.checkpoint is not None:
                return Path(r.checkpoint)
            return self._seed_dir(job) / "dense.pt"
        return self._seed_dir(job) / f"{slug(job.label)}__{slug(job.key)}.pt"

    # ------------------------------------------------------------------ data and models

    def _loaders(self, r: Recipe, seed: int) -> Loaders:
        """Train/test loaders: the dataset (split, synthetic data) is the same for every
        seed; the seed sets the shuffle order (and, through fit, the initialization and
        the attacks' randomness)."""
        key = json.dumps(dataclasses.asdict(r.data), sort_keys=True, default=str)
        if key != self._data_key:
            self._datasets = create_datasets(
                r.data.name, root=r.data.root, download=r.data.download, seed=0, **r.data.options
            )
            self._data_key = key
        ds = self._datasets
        train_loader = DataLoader(
            ds.train, batch_size=r.data.batch_size, shuffle=True,
            generator=torch.Generator().manual_seed(seed), num_workers=r.data.num_workers,
        )
        test_loader = DataLoader(
            ds.test, batch_size=r.data.test_batch_size or 2 * r.data.batch_size, shuffle=False,
            num_workers=r.data.num_workers,
        )
        return Loaders(train_loader, test_loader, ds.info)

    def _dense_model(self, job: Job, r: Recipe, loaders: Loaders) -> Any:
        """The dense model of (variant, seed), trained once and saved; always returned as
        reloaded from its checkpoint (a fresh copy each call)."""
        key = (job.variant_index, job.seed)
        if self._dense_key != key:
            path = self._checkpoint_path(dataclasses.replace(job, label="dense", id="", key="-"))
            if not path.is_file():
                assert r.model is not None and r.train is not None
                info = loaders.info
                torch.manual_seed(job.seed)
                model = create_model(
                    r.model.name, num_classes=info.num_classes, input_shape=info.input_shape,
                    mean=info.mean, std=info.std, **r.model.options,
                )
                logger.info("training the dense %s (seed %d, %d epochs)", r.model.name, job.seed, r.train.epochs)
                result = self._fit(model, loaders, r.train, (), seed=job.seed, ckpt_dir=path.parent / "train")
                if self.ctx.is_main:
                    save_pruned(model, path, meta=self._meta(r, job, fit=result.to_dict()))
                distributed.barrier(self.ctx)
                self._cleanup(path.parent / "train")
            self._dense = load_pruned(path, map_location="cpu")
            self._dense_key = key
        return copy.deepcopy(self._dense)

    def _pruned_model(
        self, job: Job, loaders: Loaders, dense: Any, example: Any, timing: dict[str, float]
    ) -> tuple[Any, dict[str, Any]]:
        """The pruned (and finetuned) model of ``job``, as reloaded from its checkpoint
        (made now, or before an interruption), and its row's pruning columns."""
        assert job.entry is not None
        update: dict[str, Any] = {}
        params = dict(job.params)
        if job.match is not None:
            params = {"target_macs": float(self.rows[job.match]["pruned_macs_kept"])}
            update.update(matched_to=job.match, target_macs=params["target_macs"], settings=dict(params))
        path = self._checkpoint_path(job)
        if path.is_file():  # pruned and finetuned before an interruption
            model = load_pruned(path, map_location="cpu")
            meta = getattr(model, "robustprune_meta", {}) or {}
            report_dict, fit_dict = meta["prune_report"], meta.get("fit")
        else:
            report_dict, fit_dict = self._prune_and_finetune(job, loaders, dense, example, params, timing)
            model = load_pruned(path, map_location="cpu")
        update.update(prune=report_dict, fit=fit_dict, pruned_macs_kept=float(report_dict["macs_kept"]))
        return model, update

    def _prune_and_finetune(
        self, job: Job, loaders: Loaders, model: Any, example: Any, params: dict[str, float],
        timing: dict[str, float],
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Prune ``model`` in place, finetune it and save it; the report and fit dicts."""
        assert job.entry is not None
        r, path = self.variants[job.variant], self._checkpoint_path(job)
        t0 = time.perf_counter()
        with torch.enable_grad():
            try:
                report = prune(
                    model, method=job.entry.method, example_inputs=example, **params,
                    **job.entry.pruner_options(),
                )
            except RobustPruneError as exc:
                raise type(exc)(f"{job.id}: {exc}") from exc
        report_dict = report.to_dict()
        report_dict.setdefault("macs_kept", report.macs_kept)
        report_dict.setdefault("params_kept", report.params_kept)
        timing["prune"] = time.perf_counter() - t0
        fit_dict = None
        t0 = time.perf_counter()
        ft_dir = path.with_name(path.stem + ".finetune")
        if r.finetune.epochs > 0:
            result = self._fit(model, loaders, r.finetune, job.entry.regularizers, seed=job.seed, ckpt_dir=ft_dir)
            fit_dict = result.to_dict()
            fit_dict.pop("checkpoint", None)  # removed once the model is saved
        timing["finetune"] = time.perf_counter() - t0
        if self.ctx.is_main:
            save_pruned(model.cpu(), path, meta=self._meta(r, job, prune_report=report_dict, fit=fit_dict))
        distributed.barrier(self.ctx)
        if r.finetune.epochs > 0:
            self._cleanup(ft_dir)
        return report_dict, fit_dict

    def _fit(
        self, model: Any, loaders: Loaders, cfg: TrainConfig | FinetuneConfig,
        extra: Sequence[RegularizerSpec], *, seed: int, ckpt_dir: Path,
    ) -> train.FitResult:
        """``train.fit`` with a ``[train]``/``[finetune]`` section (a FitConfig) and the
        modules of the section's regularizers plus ``extra`` (weight-0 ones left out: they
        add nothing)."""
        specs = [spec for spec in (*cfg.regularizers, *extra) if spec.weight != 0]
        return train.fit(
            model, loaders, cfg, regularizers=[spec.build() for spec in specs],
            device=self.device, checkpoint_dir=ckpt_dir, seed=seed, progress=self.progress,
        )

    def _cleanup(self, directory: Path) -> None:
        """Remove a finished fit's epoch checkpoints (the final model is saved)."""
        if self.ctx.is_main and directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)

    def _meta(self, r: Recipe, job: Job, **extra: Any) -> dict[str, Any]:
        return {
            "recipe": r.name,
            "variant": job.variant,
            "seed": job.seed,
            "label": job.label,
            "setting": job.setting,
            "data": {"name": r.data.name, "options": dict(r.data.options)},
            **extra,
        }

    def _analyze(self, model: Any, r: Recipe, example: Any, job: Job) -> dict[str, Any]:
        report = analysis_report(model, r, self._datasets.test, example)
        stem = slug(job.id.replace("/", "__"))
        self.state.write(f"analysis/{stem}.json", json.dumps(report.to_dict(), indent=2, default=json_default))
        self.state.write(f"analysis/{stem}.md", report.to_markdown())
        return {**analysis_summary(report), "report": f"analysis/{stem}.md"}
