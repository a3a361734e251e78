"""Executors of a recipe run: ``processes`` and ``ray`` write the rows of a sequential
(``local``) run, respect the job graph, resume, report a failed job with its id while the
others finish, and refuse bad options with one clear line before any job starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from robustprune.errors import InvalidArgumentError
from robustprune.recipe import load_recipe, plan_jobs, run_recipe
from robustprune.recipe.execute import dependencies
from robustprune.recipe.executors import JobsFailedError, executor_spec

TEXT = """
name = "exec"
seeds = [0, 1]
threads = 1
[data]
name = "digits"
batch_size = 128
[model]
name = "cnn-small"
widths = [4, 8]
convs_per_stage = 1
[train]
epochs = 1
lr = 0.1
[[prune]]
method = "fixed"
ratio = [0.5]
[[prune]]
method = "scratch"
match = "fixed"
[finetune]
epochs = 1
lr = 0.02
[eval]
eps = 0.1
attacks = ["apgd-ce"]
n_examples = 16
n_iter = 3
latency = false
"""
TIMING = {"seconds", "timing_s"}


def _recipe(tmp_path: Path, *overrides: str) -> Any:
    path = tmp_path / "exec.toml"
    path.write_text(TEXT, encoding="utf-8")
    return load_recipe(path, [f"output={json.dumps(str(tmp_path / 'runs'))}", *overrides])


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


def _stable(rows: Any, *run_dirs: Path) -> list[dict[str, Any]]:
    """The rows without timing fields (at any depth), the run directories written as RUN."""
    text = json.dumps(_untimed(list(rows)), sort_keys=True)
    for run_dir in run_dirs:
        text = text.replace(str(run_dir), "RUN")
    return json.loads(text)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    tmp = tmp_path_factory.mktemp("exec")
    recipe = _recipe(tmp)
    return recipe, run_recipe(recipe, run_dir=tmp / "local", progress=False)


def test_the_job_graph_waits_for_the_dense_model_and_the_matched_job(local_run) -> None:
    recipe, _ = local_run
    deps = {job.id: dependencies(job) for job in plan_jobs(recipe)}
    assert deps["seed0/dense"] == ()
    assert deps["seed1/fixed/ratio=0.5"] == ("seed1/dense",)
    assert deps["seed0/scratch/match=fixed:ratio=0.5"] == ("seed0/dense", "seed0/fixed/ratio=0.5")


def test_processes_give_the_rows_of_a_local_run(local_run, tmp_path: Path) -> None:
    recipe, local = local_run
    out = tmp_path / "proc"
    result = run_recipe(recipe, run_dir=out, progress=False, executor="processes", jobs=2)
    assert [r["id"] for r in result.rows] == [r["id"] for r in local.rows]  # plan order
    assert _stable(result.rows, out) == _stable(local.rows, local.run_dir)
    assert (out / "summary.md").is_file()

    # resume: a deleted row (its checkpoint kept) is measured again, the file ends the same
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:1] + lines[2:]))
    again = run_recipe(recipe, run_dir=out, resume=True, progress=False, executor="processes", jobs=2)
    assert _stable(again.rows, out) == _stable(local.rows, local.run_dir)


def test_a_failed_job_is_reported_with_its_id_and_the_others_finish(local_run, tmp_path: Path) -> None:
    recipe, local = local_run
    out = tmp_path / "broken"
    shutil.copytree(local.run_dir, out)
    kept = [r for r in local.rows if r["label"] == "dense"]  # the pruned and scratch jobs run again
    text = "".join(json.dumps(r) + "\n" for r in kept)
    (out / "results.jsonl").write_text(text.replace(str(local.run_dir), str(out)))
    (out / "checkpoints" / "seed1" / "fixed__ratio=0.5.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(JobsFailedError) as info:
        run_recipe(recipe, run_dir=out, resume=True, progress=False, executor="processes", jobs=2)
    failures = info.value.failures
    assert set(failures) == {"seed1/fixed/ratio=0.5", "seed1/scratch/match=fixed:ratio=0.5"}
    assert "seed1/fixed/ratio=0.5" in str(info.value) and "needs seed1/fixed/ratio=0.5" in str(info.value)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    expected = [r for r in local.rows if r["id"] not in failures]
    # in plan order; a copied checkpoint records the copied run's paths
    assert _stable(rows, out, local.run_dir) == _stable(expected, local.run_dir)


def test_ray_gives_the_rows_of_a_local_run(local_run, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    recipe, local = local_run
    out = tmp_path / "ray"
    result = run_recipe(recipe, run_dir=out, progress=False, executor="ray", jobs=2)
    assert _stable(result.rows, out) == _stable(local.rows, local.run_dir)


def _run_killing_one_worker(recipe: Any, out: Path, pids: Any, **executor: Any) -> tuple[Any, list[int]]:
    """``run_recipe`` into ``out`` while a thread SIGKILLs the first of ``pids()`` once the
    first row is written (once); the result and the killed pids."""
    import os
    import signal
    import threading
    import time

    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            rows = out / "results.jsonl"
            found = pids()
            if rows.is_file() and rows.read_text().strip() and found:
                os.kill(found[0], signal.SIGKILL)
                killed.append(found[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    result = run_recipe(recipe, run_dir=out, progress=False, **executor)
    killer.join(timeout=5)
    return result, killed


def _ray_task_pids() -> list[int]:
    """The processes running a recipe job as a Ray task (Ray titles them ``ray::run_task``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::run_task"):
                pids.append(int(proc.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def test_a_killed_ray_worker_restarts_its_job_and_the_run_ends_as_a_local_one(
    local_run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Ray worker SIGKILLed mid-job (once the first row is written): its job runs again,
    once, and the rows equal a local run's."""
    pytest.importorskip("ray")
    if not Path("/proc/self/cmdline").is_file():
        pytest.skip("finds the Ray workers through /proc")
    recipe, local = local_run
    out = tmp_path / "ray-killed"
    result, killed = _run_killing_one_worker(recipe, out, _ray_task_pids, executor="ray", jobs=2)
    assert killed, "no Ray worker was killed: the test did not test anything"
    assert "a Ray worker died" in caplog.text and "starts again" in caplog.text
    assert _stable(result.rows, out) == _stable(local.rows, local.run_dir)


def test_a_ray_job_whose_worker_dies_twice_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    """A task that fails twice (here: a stand-in for Ray whose every task fails) is reported
    with its job id after one retry; no endless resubmission."""
    from robustprune.recipe import executors_ray
    from robustprune.recipe.execute import JobTask

    class FakeRay:
        def __init__(self) -> None:
            self.submitted: list[str] = []

        def is_initialized(self) -> bool:
            return True

        def remote(self, **_: Any) -> Any:
            ray = self

            class Remote:
                def __init__(self, fn: Any) -> None:
                    pass

                def remote(self, task: JobTask) -> object:
                    ray.submitted.append(task.job_id)
                    return object()

            return Remote

        def wait(self, refs: list[Any], num_returns: int) -> tuple[list[Any], list[Any]]:
            return refs[:num_returns], refs[num_returns:]

        def get(self, ref: Any) -> Any:
            raise RuntimeError("worker crashed")

    fake = FakeRay()
    backend = executors_ray.RayBackend.__new__(executors_ray.RayBackend)
    backend.ray, backend.started, backend.refs, backend.restarted = fake, False, {}, set()
    backend.remote = fake.remote()(None)
    backend.submit(JobTask(recipe=None, run_dir=str(tmp_path), job_id="seed0/fixed"))  # type: ignore[arg-type]
    first = list(backend.results())
    assert first == [] and fake.submitted == ["seed0/fixed", "seed0/fixed"]
    (second,) = list(backend.results())
    assert second.job_id == "seed0/fixed" and "died twice" in (second.error or "")
    assert not backend.refs and fake.submitted == ["seed0/fixed", "seed0/fixed"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "threads"}, r"unknown executor; choose one of local, processes, ray"),
        ({"name": "processes", "jobs": 0}, r"--jobs 0: .* integer >= 1"),
        ({"name": "processes", "jobs": "two"}, r"--jobs 'two'"),
        ({"name": "local", "jobs": 2}, r"--jobs needs --executor processes or --executor ray"),
        ({"name": "processes", "ray_address": "h:1"}, r"--ray-address needs --executor ray"),
        ({"name": "ray", "ray_address": "127.0.0.1:1"}, r"no Ray cluster answers there.*ray start --head"),
        ({"name": "ray", "ray_address": "nohost"}, r"give HOST:PORT"),
    ],
)
def test_bad_executor_options_are_one_clear_line(kwargs: dict[str, Any], match: str) -> None:
    if kwargs.get("ray_address") and kwargs["name"] == "ray":
        pytest.importorskip("ray")
    with pytest.raises(InvalidArgumentError, match=match) as info:
        executor_spec(**kwargs)
    assert "\n" not in str(info.value)


def test_ray_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(InvalidArgumentError, match=r"pip install 'robustprune\[ray\]'"):
        executor_spec("ray")


def test_bad_options_fail_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustprune.cli import main

    recipe = tmp_path / "exec.toml"
    recipe.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "never"
    for args in (["--executor", "nope"], ["--executor", "processes", "--jobs", "0"], ["--jobs", "2"]):
        assert main(["run", str(recipe), "--run-dir", str(out), *args]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("--executor" in err or "--jobs" in err)
        assert not out.exists()


def test_gpus_per_job_is_a_checked_recipe_key(tmp_path: Path) -> None:
    from robustprune.errors import RecipeError

    assert _recipe(tmp_path, "gpus_per_job=0.5").gpus_per_job == 0.5
    assert "gpus_per_job = 0.5" in _recipe(tmp_path, "gpus_per_job=0.5").to_toml()
    with pytest.raises(RecipeError, match="gpus_per_job"):
        _recipe(tmp_path, "gpus_per_job=-1")


def test_a_killed_worker_restarts_its_job_and_the_run_ends_as_a_local_one(
    local_run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker process killed mid-job (here: SIGKILL once the first row is written) breaks
    the pool; the jobs in flight start again on a new one and the rows equal a local run's."""
    import multiprocessing

    recipe, local = local_run
    out = tmp_path / "killed"
    result, killed = _run_killing_one_worker(
        recipe, out, lambda: [w.pid for w in multiprocessing.active_children()], executor="processes", jobs=2)
    assert killed, "no worker was killed: the test did not test anything"
    assert "a worker process died; job seed" in caplog.text and "starts again" in caplog.text
    assert _stable(result.rows, out) == _stable(local.rows, local.run_dir)


def test_a_run_killed_mid_job_resumes_with_processes(local_run, tmp_path: Path) -> None:
    """The whole run (driver and workers) killed while jobs are in flight; ``--resume`` with
    the processes executor skips the finished jobs, restarts the killed ones, and the file
    ends as a local run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _, local = local_run
    out = tmp_path / "interrupted"
    source = tmp_path / "exec.toml"
    source.write_text(TEXT, encoding="utf-8")
    cmd = [sys.executable, "-m", "robustprune.cli", "run", str(source), "--run-dir", str(out),
           "--executor", "processes", "--jobs", "2", "--no-progress", "--set",
           f"output={json.dumps(str(tmp_path / 'runs'))}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rows = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (rows.is_file() and rows.read_text().strip()):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(line)["id"] for line in rows.read_text().splitlines()]
    assert 1 <= len(before) < len(local.rows), "the run was not stopped mid-way"
    again = run_recipe(_recipe(tmp_path), run_dir=out, resume=True, progress=False, executor="processes", jobs=2)
    assert _stable(again.rows, out) == _stable(local.rows, local.run_dir)
