"""fit, robust_accuracy and evaluate under torchrun: 2 gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    from robustprune.attacks import AdversarialConfig, robust_accuracy
    from robustprune.data import create_loaders
    from robustprune.evaluation import evaluate
    from robustprune.train import fit

    mode, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ.get("RANK", "0"))
    loaders = create_loaders("digits", batch_size=32, seed=0)
    torch.manual_seed(100 + rank)  # replicas start different: DDP must broadcast rank 0's
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)
    )
    info = {}
    if mode == "train":
        first = fit(model, loaders, 2, lr=0.05, progress=False, checkpoint_dir=os.path.join(out, "ckpt"))
        fit(model, loaders.train, 1, lr=0.01, progress=False,
            adversarial=AdversarialConfig(kind="trades", eps=0.1, steps=2))
        fit(model, loaders.train, 1, lr=0.01, progress=False,
            adversarial=AdversarialConfig(kind="pgd", eps=0.1, steps=2))
        info = {"world_size": first.world_size, "test_accuracy": first.final_test_accuracy}
        torch.save(model.state_dict(), os.path.join(out, f"weights{rank}.pt"))
        import copy
        from robustprune.pruners.schedules import Schedule, ScheduledPruning
        pruned = copy.deepcopy(model)
        plan = ScheduledPruning(target_macs=0.5, method="global",
                                schedule=Schedule(kind="during-training", at=1, steps=2))
        result = fit(pruned, loaders.train, 3, lr=0.01, progress=False, pruning=plan)
        info["pruning_steps"] = len(result.pruning["reports"])
        torch.save(pruned.state_dict(), os.path.join(out, f"pruned{rank}.pt"))
    else:
        model.load_state_dict(torch.load(os.path.join(out, "weights0.pt"), weights_only=True))
    robust = robust_accuracy(model, loaders.test, eps=0.1, attacks=("apgd-ce", "apgd-t"),
                             n_iter=10, batch_size=50, progress=False)
    ev = evaluate(model, loaders.test, latency=False, progress=False)
    info.update(robust=robust.to_dict(), clean=ev.clean_accuracy, n=ev.n)
    with open(os.path.join(out, f"{mode}{rank}.json"), "w") as f:
        json.dump(info, f)
    """
)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    script = out / "worker.py"
    script.write_text(_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "train", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = subprocess.run([sys.executable, str(script), "eval", str(out)], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    return out


def test_training_keeps_the_replicas_weights_identical(ddp_run):
    a = torch.load(ddp_run / "weights0.pt", weights_only=True)
    b = torch.load(ddp_run / "weights1.pt", weights_only=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    info = json.loads((ddp_run / "train0.json").read_text())
    assert info["world_size"] == 2
    assert info["test_accuracy"] > 0.8
    assert torch.load(ddp_run / "ckpt" / "last.pt", weights_only=True)["epoch"] == 2


def test_every_rank_prunes_identically_during_training(ddp_run):
    a = torch.load(ddp_run / "pruned0.pt", weights_only=True)
    b = torch.load(ddp_run / "pruned1.pt", weights_only=True)
    dense = torch.load(ddp_run / "weights0.pt", weights_only=True)
    assert a["1.weight"].shape[0] < dense["1.weight"].shape[0]  # pruned
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((ddp_run / "train0.json").read_text())["pruning_steps"] == 2


def test_evaluation_gives_the_same_numbers_on_two_ranks_as_on_one(ddp_run):
    rank0 = json.loads((ddp_run / "train0.json").read_text())
    rank1 = json.loads((ddp_run / "train1.json").read_text())
    single = json.loads((ddp_run / "eval0.json").read_text())
    assert rank0["robust"] == rank1["robust"] == single["robust"]
    assert rank0["clean"] == rank1["clean"] == single["clean"]
    assert rank0["n"] == single["n"] == 360
    assert 0.0 < single["robust"]["robust_accuracy"] < single["robust"]["clean_accuracy"]
