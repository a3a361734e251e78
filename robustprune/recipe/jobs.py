"""Executing one job of a recipe: the dense model, a pruned model (one-shot, iterative or
during-training, finetuned, optionally distilled) or a scratch baseline; the model is saved
and every row is measured on the model as reloaded from its checkpoint, so a resumed run
gives the same numbers as an uninterrupted one."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from robustprune import distributed, train
from robustprune._inputs import resolve_example_inputs
from robustprune.checkpoint import load_pruned, save_pruned
from robustprune.data import Loaders, create_datasets, default_num_workers
from robustprune.models import create_model
from robustprune.pruners.history import replay_history
from robustprune.recipe.build import pruned_model, start_weights
from robustprune.recipe.config import FinetuneConfig, Recipe, RegularizerSpec, TrainConfig
from robustprune.recipe.measure import analysis_report, analysis_summary, evaluation_row
from robustprune.recipe.parse import entry_finetune
from robustprune.recipe.plan import Job
from robustprune.recipe.preflight import data_errors
from robustprune.recipe.rows import (
    add_costs,
    comparison_columns,
    cost,
    finetune_column,
    schedule_column,
)
from robustprune.recipe.rundir import RunDir, json_default, slug

__all__ = ["JobRunner"]

logger = logging.getLogger(__name__)


class JobRunner:
    """Executes :class:`~robustprune.recipe.plan.Job` s: holds the data of the current
    variant and the dense model of the current (variant, seed), both rebuilt when those
    change, and the rows finished so far (``rows``: job id -> row)."""

    def __init__(
        self, variants: Mapping[str, Recipe], state: RunDir, *, device: Any, ctx: Any, progress: bool
    ) -> None:
        self.variants, self.state, self.device, self.ctx = variants, state, device, ctx
        self.progress = progress
        self.loggers: tuple[Any, ...] = ()  # the current job's (set by the runner)
        self.rows: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self._data_key: str | None = None
        self._datasets: Any = None
        self._dense_key: tuple[int, int] | None = None
        self._dense: Any = None

    def skip(self, job: Job, row: dict[str, Any]) -> None:
        """Record a job finished by an earlier (resumed) run: later jobs that match it or
        compare with it find its row and its checkpoint."""
        self.jobs[job.id] = job
        self.rows[job.id] = row

    def run_job(self, job: Job) -> dict[str, Any]:
        """Build, measure and describe one model: its results row."""
        self.jobs[job.id] = job
        r = self.variants[job.variant]
        t0 = time.perf_counter()
        loaders = self._loaders(r, job.seed)
        dense = self._dense_model(job, r, loaders)
        # one test example, copied (the dataset's own tensor is never handed out)
        example = resolve_example_inputs(dense, data_example=self._datasets.test[0][0].unsqueeze(0).clone())
        timing: dict[str, float] = {"dense": time.perf_counter() - t0}
        row: dict[str, Any] = {
            "id": job.id, "variant": job.variant, "variant_index": job.variant_index, "seed": job.seed,
            "order": job.order, "label": job.label, "method": job.method, "setting": job.setting,
            "setting_key": job.key, "settings": dict(job.params), **comparison_columns(job),
        }
        if job.label == "dense":
            model = dense
            row.update(prune=None, fit=None, pruned_macs_kept=1.0, target_macs=None, schedule=None,
                       finetune=None, cost=cost(r.train), pruned_nothing=False)
        elif job.method == "scratch":
            model, update = self._scratch(job, r, loaders, timing)
            row.update(update)
        else:
            model, update = self._pruned(job, r, loaders, dense, example, timing)
            row.update(update)
        t0 = time.perf_counter()
        dense_row = self.rows.get(job.id.rsplit("/", 2)[0] + "/dense") if job.label != "dense" else None
        eval_loader = loaders.val if r.eval.split == "val" else loaders.test
        row.update(evaluation_row(
            model, r, eval_loader, example, seed=job.seed, dense_row=dense_row,
            device=self.device, progress=self.progress,
        ))
        timing["eval"] = time.perf_counter() - t0
        row["checkpoint"] = str(self.checkpoint_path(job))
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

    def checkpoint_path(self, job: Job) -> Path:
        if job.label == "dense":
            r = self.variants[job.variant]
            if r.checkpoint is not None:
                return Path(r.checkpoint)
            return self._seed_dir(job) / "dense.pt"
        return self._seed_dir(job) / f"{slug(job.label)}__{slug(job.key)}.pt"

    def snapshot(self, job: Job, epoch: int) -> Path:
        """The dense training's checkpoint after ``epoch`` epochs (for during-training jobs)."""
        return self._seed_dir(job) / "snapshots" / f"epoch{epoch}.pt"

    # ------------------------------------------------------------------ data and models

    def _loaders(self, r: Recipe, seed: int) -> Loaders:
        """Train/test (and validation) loaders: the dataset and its splits are the same for
        every seed; the seed sets the shuffle order (and, through fit, the initialization
        and the attacks' randomness)."""
        key = json.dumps(dataclasses.asdict(r.data), sort_keys=True, default=str)
        if key != self._data_key:
            d = r.data
            with data_errors(d.name, d.root, d.options):
                self._datasets = create_datasets(
                    d.name, root=d.root, download=d.download, seed=0, validation=d.validation, **d.options
                )
            self._data_key = key
        ds, d = self._datasets, r.data
        # [data] num_workers, or (None) the default: 0 for in-memory data, else a few
        workers = default_num_workers(ds.train) if d.num_workers is None else d.num_workers
        opts = {"num_workers": workers, "persistent_workers": workers > 0}
        train_loader = DataLoader(
            ds.train, batch_size=d.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), **opts,
        )
        batch = d.test_batch_size or 2 * d.batch_size
        test_loader = DataLoader(ds.test, batch_size=batch, shuffle=False, **opts)
        val_loader = None if ds.val is None else DataLoader(ds.val, batch_size=batch, shuffle=False, **opts)
        return Loaders(train_loader, test_loader, ds.info, val_loader)

    def init_model(self, r: Recipe, loaders: Loaders, seed: int) -> Any:
        """The recipe's model at its seeded initialization."""
        assert r.model is not None
        info = loaders.info
        torch.manual_seed(seed)
        return create_model(
            r.model.name, num_classes=info.num_classes, input_shape=info.input_shape,
            mean=info.mean, std=info.std, **r.model.options,
        )

    def _dense_model(self, job: Job, r: Recipe, loaders: Loaders) -> Any:
        """The dense model of (variant, seed), trained once and saved; always returned as
        reloaded from its checkpoint (a fresh copy each call). The training keeps its
        checkpoints at the epochs where during-training entries prune."""
        key = (job.variant_index, job.seed)
        if self._dense_key != key:
            dense_job = dataclasses.replace(job, label="dense", id="", key="-")
            path = self.checkpoint_path(dense_job)
            if not path.is_file():
                assert r.train is not None
                model = start_weights(self.init_model(r, loaders, job.seed), r)  # [model] weights
                logger.info("training the dense %s (seed %d, %d epochs)", model.robustprune_spec.name,
                            job.seed, r.train.epochs)
                keep = _snapshot_epochs(r)
                ckpt_dir = path.parent / "train"
                result = self.fit(model, loaders, r.train, (), seed=job.seed, ckpt_dir=ckpt_dir,
                                   keep_checkpoints=keep)
                if self.ctx.is_main:
                    save_pruned(model, path, meta=self.meta(r, job, fit=result.to_dict()))
                    for epoch in keep:
                        target = self.snapshot(dense_job, epoch)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(ckpt_dir / f"epoch{epoch}.pt", target)
                distributed.barrier(self.ctx)
                self.cleanup(ckpt_dir)
            self._dense = load_pruned(path, map_location="cpu")
            self._dense_key = key
        return copy.deepcopy(self._dense)

    def _pruned(
        self, job: Job, r: Recipe, loaders: Loaders, dense: Any, example: Any, timing: dict[str, float]
    ) -> tuple[Any, dict[str, Any]]:
        """The pruned (and finetuned) model of ``job``, as reloaded from its checkpoint
        (made now, or before an interruption), and its row's pruning columns."""
        assert job.entry is not None
        entry, ft = job.entry, entry_finetune(r, job.entry)
        params = dict(job.params)
        update: dict[str, Any] = {"target_macs": params.get("target_macs")}
        if job.match is not None:
            params = {"target_macs": float(self.rows[job.match]["pruned_macs_kept"])}
            update.update(matched_to=job.match, target_macs=params["target_macs"], settings=dict(params))
        path = self.checkpoint_path(job)
        if path.is_file():  # pruned and finetuned before an interruption
            meta = getattr(load_pruned(path, map_location="cpu"), "robustprune_meta", {}) or {}
            report_dict, fit_dict = meta["prune_report"], meta.get("fit")
        else:
            report_dict, fit_dict = pruned_model(self, job, r, loaders, dense, example, params, timing)
        model = load_pruned(path, map_location="cpu")
        kept = float(report_dict["macs_kept"])
        if kept >= 1 - 1e-12:
            logger.warning("%s pruned nothing (it keeps every unit): check its setting.", job.id)
        dense_cost = cost(r.train, _dense_epochs(r, entry))
        update.update(
            prune=report_dict, fit=fit_dict, pruned_macs_kept=kept, schedule=schedule_column(entry),
            finetune=finetune_column(ft, entry), cost=add_costs(dense_cost, cost(ft)),
            pruned_nothing=kept >= 1 - 1e-12,
        )
        return model, update

    def _scratch(self, job: Job, r: Recipe, loaders: Loaders, timing: dict[str, float]) -> tuple[Any, dict[str, Any]]:
        """The scratch baseline of ``job``: the matched model's exact widths, trained from a
        fresh initialization for as many epochs as the matched model cost in total."""
        assert r.train is not None and job.match is not None
        matched = self.rows[job.match]
        epochs = int(matched["cost"]["epochs"])
        path = self.checkpoint_path(job)
        if not path.is_file():
            t0 = time.perf_counter()
            model = self.init_model(r, loaders, job.seed)
            source = load_pruned(self.checkpoint_path(self.jobs[job.match]), map_location="cpu")
            replay_history(model, source.robustprune_history)
            _reinitialize(model, job.seed)
            cfg = dataclasses.replace(r.train, epochs=epochs)
            result = self.fit(model, loaders, cfg, (), seed=job.seed, ckpt_dir=path.with_name(path.stem + ".train"))
            if self.ctx.is_main:
                save_pruned(model.cpu(), path, meta=self.meta(r, job, fit=result.to_dict()))
            distributed.barrier(self.ctx)
            self.cleanup(path.with_name(path.stem + ".train"))
            timing["train"] = time.perf_counter() - t0
        model = load_pruned(path, map_location="cpu")
        meta = getattr(model, "robustprune_meta", {}) or {}
        return model, {
            "prune": None, "fit": meta.get("fit"), "pruned_macs_kept": float(matched["pruned_macs_kept"]),
            "target_macs": matched.get("target_macs"), "matched_to": job.match, "schedule": None,
            "finetune": None, "cost": cost(r.train, epochs), "pruned_nothing": False,
        }

    # ------------------------------------------------------------------ shared by the builders

    def fit(
        self, model: Any, loaders: Loaders, cfg: TrainConfig | FinetuneConfig,
        extra: Sequence[RegularizerSpec], *, seed: int, ckpt_dir: Path, **kwargs: Any,
    ) -> train.FitResult:
        """``train.fit`` with a ``[train]``/``[finetune]`` section (a FitConfig) and the
        modules of the section's regularizers plus ``extra`` (weight-0 ones left out: they
        add nothing); ``kwargs`` go to ``fit`` (pruning, distill, resume_from, ...)."""
        specs = [spec for spec in (*cfg.regularizers, *extra) if spec.weight != 0]
        return train.fit(
            model, loaders, cfg, regularizers=[spec.build() for spec in specs],
            device=self.device, checkpoint_dir=ckpt_dir, seed=seed, progress=self.progress,
            loggers=self.loggers, **kwargs,
        )

    def cleanup(self, directory: Path) -> None:
        """Remove a finished fit's epoch checkpoints (the final model is saved)."""
        if self.ctx.is_main and directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)

    def meta(self, r: Recipe, job: Job, **extra: Any) -> dict[str, Any]:
        return {
            "recipe": r.name, "variant": job.variant, "seed": job.seed, "label": job.label,
            "setting": job.setting, "data": {"name": r.data.name, "options": dict(r.data.options)},
            # the dense training's learning rate: `robustprune prune --finetune-epochs` finetunes
            # at it by default (rewinding the lr: the best measured finetune)
            **({"train_lr": float(r.train.lr)} if r.train is not None else {}),
            **extra,
        }

    def _analyze(self, model: Any, r: Recipe, example: Any, job: Job) -> dict[str, Any]:
        report = analysis_report(model, r, self._datasets.test, example)
        stem = slug(job.id.replace("/", "__"))
        self.state.write(f"analysis/{stem}.json", json.dumps(report.to_dict(), indent=2, default=json_default))
        self.state.write(f"analysis/{stem}.md", report.to_markdown())
        return {**analysis_summary(report), "report": f"analysis/{stem}.md"}


def _snapshot_epochs(r: Recipe) -> tuple[int, ...]:
    """The epochs of the dense training that during-training entries start from."""
    if r.train is None:
        return ()
    found = {e.schedule.epochs(r.train.epochs)[0] for e in r.prune if e.kind == "during-training"}
    return tuple(sorted(e for e in found if e > 0))


def _dense_epochs(r: Recipe, entry: Any) -> int:
    """The dense training's share of a pruned model's cost (all of ``[train]``, none for a
    ``[checkpoint]`` of unknown cost)."""
    return 0 if r.train is None else r.train.epochs


def _reinitialize(model: Any, seed: int) -> None:
    """Fresh random weights for every layer of ``model`` at its current (pruned) widths."""
    torch.manual_seed(seed)
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()

