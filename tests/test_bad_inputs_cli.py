"""Bad command lines: each is refused with one ``robustprune: error:`` line (or argparse's
usage error), a non-zero exit and no traceback, before anything is written. One argv per
line; ``{recipe}``, ``{ckpt}``, ``{file}``, ``{dir}``, ``{missing}``, ``{corrupt}`` ... name
the files of the workspace fixture."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from badinput import expect_cli_refusal, run_cli, tiny_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustprune.checkpoint import save_pruned
from robustprune.models import create_model

ROW = {"label": "dense", "setting": "-", "seed": 0, "macs": 10.0, "params": 5.0, "macs_kept": 1.0, "clean_accuracy": 0.5}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ws")
    (d / "recipe.toml").write_text(tiny_recipe("bad-cli", output=str(d / "runs")), encoding="utf-8")
    (d / "afile").write_text("not a directory", encoding="utf-8")
    (d / "adir").mkdir()
    torch.manual_seed(0)
    model = create_model("fcn", num_classes=10, input_shape=(1, 8, 8), width=8)
    save_pruned(model.eval(), d / "ckpt.pt", meta={"data": {"name": "digits", "options": {}}})
    reports = {
        "corrupt": "{not json\n" + json.dumps(ROW) + "\n",
        "nolabel": json.dumps({k: v for k, v in ROW.items() if k != "label"}) + "\n",
        "badtype": json.dumps({**ROW, "macs": "many"}) + "\n",
        "notobject": "[1, 2, 3]\n",
        "empty": "",
    }
    for name, text in reports.items():
        (d / name).mkdir()
        (d / name / "results.jsonl").write_text(text, encoding="utf-8")
    (d / "binary").mkdir()
    (d / "binary" / "results.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (d / "resultsdir").mkdir()
    (d / "resultsdir" / "results.jsonl").mkdir()
    return {"dir": d}


CASES = [
    # run --dry-run makes the real run's checks
    ("run {recipe} --dry-run --set model.name='nope'", r"model\.name: Unknown model 'nope'"),
    ("run {recipe} --dry-run --set model.kernel=3", r"unknown key 'model\.kernel'"),
    ("run {recipe} --dry-run --set model.width=0", r"model\.width"),
    ("run {recipe} --dry-run --set data.size=-3", r"data\.size"),
    ("run {recipe} --dry-run --set data.name='nope'", r"nope"),
    ("run {recipe} --dry-run --run-dir {file}", r"is a file, not a directory"),
    ("run {recipe} --dry-run --resume --run-dir {missing}", r"nothing to resume"),
    ("run {recipe} --dry-run --set output={file_json}", r"cannot write runs there"),
    # run
    ("run {recipe} --run-dir {file} --no-progress", r"is a file, not a directory"),
    ("run {recipe} --run-dir {file}/sub --no-progress", r"is a file, not a directory"),
    ("run {recipe} --resume --run-dir {missing} --no-progress", r"nothing to resume.*does not exist"),
    ("run {recipe} --resume --run-dir {dir}/adir --no-progress", r"nothing to resume.*config\.toml"),
    ("run {recipe} --resume --no-progress", r"no earlier run of 'bad-cli'"),
    ("run {recipe} --set data.size=-3 --no-progress", r"data\.size"),
    ("run {recipe} --set model.name='nope' --no-progress", r"Unknown model"),
    ("run {dir}/adir", r"is a directory"),
    ("run {recipe} --threads 0", r"--threads"),
    ("run {recipe} --threads x", r"--threads"),
    # prune
    ("prune --checkpoint {ckpt} --eps 0.4 --out {dir}/adir", r"--out .*a directory, not a file"),
    ("prune --checkpoint {ckpt} --eps 0.4 --out {file}/p.pt", r"--out .*is a file, not a directory"),
    ("prune --checkpoint {dir}/adir --eps 0.4 --out {dir}/o.pt", r"is a directory"),
    ("prune --checkpoint {missing} --eps 0.4 --out {dir}/o.pt", r"does not exist"),
    ("prune --checkpoint {ckpt} --eps 0 --out {dir}/o.pt", r"--eps"),
    ("prune --checkpoint {ckpt} --eps 1 --out {dir}/o.pt", r"--eps"),
    ("prune --checkpoint {ckpt} --eps nan --out {dir}/o.pt", r"--eps"),
    ("prune --checkpoint {ckpt} --target-macs 0 --out {dir}/o.pt", r"--target-macs"),
    ("prune --checkpoint {ckpt} --target-macs 1.5 --out {dir}/o.pt", r"--target-macs"),
    ("prune --checkpoint {ckpt} --ratio 1 --method global --out {dir}/o.pt", r"--ratio"),
    ("prune --checkpoint {ckpt} --ratio -0.1 --method global --out {dir}/o.pt", r"--ratio"),
    ("prune --checkpoint {ckpt} --eps 0.4 --round-to 0 --out {dir}/o.pt", r"--round-to"),
    ("prune --checkpoint {ckpt} --eps 0.4 --finetune-epochs -1 --out {dir}/o.pt", r"--finetune-epochs"),
    ("prune --checkpoint {ckpt} --eps 0.4 --finetune-epochs 1 --lr 0 --out {dir}/o.pt", r"--lr"),
    ("prune --checkpoint {ckpt} --eps 0.4 --finetune-epochs 1 --lr nan --out {dir}/o.pt", r"--lr"),
    ("prune --checkpoint {ckpt} --eps 0.4 --finetune-epochs 1 --batch-size 0 --out {dir}/o.pt", r"--batch-size"),
    ("prune --checkpoint {ckpt} --eps 0.4 --finetune-epochs 1 --adv-eps 2 --out {dir}/o.pt", r"--adv-eps"),
    ("prune --checkpoint {ckpt} --eps 0.4 --finetune-epochs 1 --adv-steps 0 --out {dir}/o.pt", r"--adv-steps"),
    ("prune --checkpoint {ckpt} --eps 0.4 --finetune-epochs 1 --distill 1.5 --out {dir}/o.pt", r"--distill"),
    ("prune --checkpoint {ckpt} --target-macs 0.5 --schedule iterative --steps 0 --out {dir}/o.pt", r"--steps"),
    ("prune --checkpoint {ckpt} --eps 0.4 --adv-eps 0.1 --out {dir}/o.pt", r"--adv-eps.*--finetune-epochs"),
    ("prune --checkpoint {ckpt} --eps 0.4 --restart --out {dir}/o.pt", r"--restart"),
    ("prune --checkpoint {ckpt} --eps 0.4 --schedule iterative --out {dir}/o.pt", r"--target-macs"),
    # analyze
    ("analyze --model fcn --n-examples -1", r"--n-examples"),
    ("analyze --model fcn --n-examples 2.5", r"--n-examples"),
    ("analyze --model fcn --eps 0", r"--eps"),
    ("analyze --model fcn --eps 1", r"--eps"),
    ("analyze --model fcn --eps inf", r"--eps"),
    ("analyze --model fcn --delta 0", r"--delta"),
    ("analyze --model fcn --delta -1", r"--delta"),
    ("analyze --model fcn --delta nan", r"--delta"),
    ("analyze --model fcn --delta 1/0", r"--delta.*divides by zero"),
    ("analyze --model fcn --delta a/b", r"--delta"),
    ("analyze --model fcn --threads 0", r"--threads"),
    ("analyze --model nope --n-examples 0", r"Unknown model"),
    ("analyze --model fcn --model-option width=0 --n-examples 0", r"width"),
    ("analyze --model fcn --model-option kernel=3 --n-examples 0", r"kernel"),
    ("analyze --model fcn --data nope --n-examples 0", r"nope"),
    ("analyze --model fcn --data digits --data-option size=-3 --n-examples 0", r"size"),
    ("analyze --checkpoint {ckpt} --model-option width=4", r"--model-option"),
    ("analyze --checkpoint {ckpt} --data digits --data-option size=16 --n-examples 4", r"inputs \(1, 8, 8\)"),
    ("analyze --checkpoint {dir}/adir", r"is a directory"),
    # eval
    ("eval --checkpoint {ckpt} --eps 2", r"--eps"),
    ("eval --checkpoint {ckpt} --eps inf", r"--eps"),
    ("eval --checkpoint {ckpt} --eps 0", r"--eps"),
    ("eval --checkpoint {ckpt} --eps -8/255", r"--eps"),
    ("eval --checkpoint {ckpt} --n-examples 0", r"--n-examples"),
    ("eval --checkpoint {ckpt} --n-examples -5", r"--n-examples"),
    ("eval --checkpoint {ckpt} --n-iter 0", r"--n-iter"),
    ("eval --checkpoint {ckpt} --batch-size 0", r"--batch-size"),
    ("eval --checkpoint {ckpt} --seed -1", r"--seed"),
    ("eval --checkpoint {ckpt} --seed x", r"--seed"),
    ("eval --checkpoint {dir}/adir", r"is a directory"),
    ("eval --checkpoint {file}", r"not a loadable"),
    ("eval --checkpoint {ckpt} --data digits --data-option size=16 --no-latency", r"inputs \(1, 8, 8\)"),
    # report
    ("report {dir}/corrupt", r"line 1: not valid JSON"),
    ("report {dir}/nolabel", r"no 'label' field"),
    ("report {dir}/badtype", r"'macs' must be"),
    ("report {dir}/notobject", r"must be a JSON object"),
    ("report {dir}/empty", r"no rows"),
    ("report {dir}/binary", r"not UTF-8"),
    ("report {dir}/resultsdir", r"results"),
    ("report {missing}", r"not a directory|No results"),
]


def _argv(line: str, ws: dict[str, Path]) -> list[str]:
    d = ws["dir"]
    names = {"recipe": d / "recipe.toml", "ckpt": d / "ckpt.pt", "file": d / "afile", "dir": d,
             "missing": d / "missing", "file_json": json.dumps(str(d / "afile"))}
    return [part.format(**{k: str(v) for k, v in names.items()}) for part in line.split()]


@pytest.mark.parametrize("line,match", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line_is_refused(line: str, match: str, ws: dict[str, Path]) -> None:
    expect_cli_refusal(_argv(line, ws), match)
    d = ws["dir"]
    assert not (d / "runs").exists(), "a refused run created its run directory"
    assert not (d / "o.pt").exists() and not (d / "missing").exists()


DRY_RUN_SAME = ["model.name='nope'", "model.kernel=3", "data.size=-3", "model.width=0"]


@pytest.mark.parametrize("override", DRY_RUN_SAME)
def test_dry_run_refuses_what_the_run_refuses_with_the_same_message(override: str, ws: dict[str, Path]) -> None:
    recipe = str(ws["dir"] / "recipe.toml")
    dry = expect_cli_refusal(["run", recipe, "--dry-run", "--set", override])
    real = expect_cli_refusal(["run", recipe, "--set", override, "--no-progress"])
    assert dry == real
    assert not (ws["dir"] / "runs").exists()


def test_dry_run_of_a_valid_recipe_writes_nothing(ws: dict[str, Path]) -> None:
    code, out, err = run_cli(["run", str(ws["dir"] / "recipe.toml"), "--dry-run"])
    assert code == 0 and "Plan:" in out and "would write" in err
    assert not (ws["dir"] / "runs").exists()


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def urlopen(*args: object, **kwargs: object) -> None:
        calls.append(str(args[0]))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def test_offline_with_download_true_is_a_clear_error(ws: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _offline(monkeypatch)
    recipe = str(ws["dir"] / "recipe.toml")
    data = ["--set", "data.name='cifar10'", "--set", "data.download=true", "--set", f"data.root={json.dumps(str(tmp_path))}"]
    err = expect_cli_refusal(["run", recipe, *data, "--run-dir", str(tmp_path / "run"), "--no-progress"],
                             r"(?s)ownload.*'cifar10'.*(offline|no network)")
    assert calls and "please report" not in err and not (tmp_path / "run").exists()
    # a dry run downloads nothing and says the run will
    calls.clear()
    code, _out, err = run_cli(["run", recipe, *data, "--dry-run"])
    assert code == 0 and not calls, err


def test_a_network_error_outside_the_data_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import robustprune.cli.parser as parser

    def cmd_list(args: object) -> int:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(parser, "cmd_list", cmd_list)
    expect_cli_refusal(["list", "models"], r"a download failed.*network")


@pytest.mark.parametrize("line", ["eval --checkpoint {missing}", "eval --checkpoint {ckpt} --eps x", "report {missing}"])
def test_under_torchrun_only_rank_0_prints_the_error(line: str, ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _argv(line, ws)
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli(argv)
    assert code != 0 and err == "" and out == ""
    monkeypatch.setenv("RANK", "0")
    expect_cli_refusal(argv)


def _rows() -> list[dict]:
    """A small two-seed results.jsonl of today's format: dense, epsilon and its reference."""
    rows = []
    for seed in (0, 1):
        for order, (label, kept, clean) in enumerate((("dense", 1.0, 0.9), ("epsilon", 0.5, 0.8), ("fixed", 0.5, 0.7))):
            rows.append({
                "id": f"seed{seed}/{label}", "variant": "", "variant_index": 0, "seed": seed, "order": order,
                "label": label, "method": label, "setting": "-" if kept == 1.0 else "target_macs=0.5",
                "setting_key": "dense" if kept == 1.0 else "target_macs=0.5", "macs": 1000 * kept,
                "params": 500 * kept, "macs_kept": kept, "params_kept": kept, "pruned_macs_kept": kept,
                "clean_accuracy": clean + 0.01 * seed, "robust_accuracy": clean / 2, "target_macs": None if kept == 1.0 else 0.5,
                "compare_key": "dense" if kept == 1.0 else "target_macs=0.5",
                "reference": None if label != "epsilon" else "fixed", "pruned_nothing": False,
                "settings": {} if kept == 1.0 else {"target_macs": 0.5}, "cost": {"epochs": 1, "attack_steps": 0},
                "eval_settings": {"eps": 0.1, "norm": "Linf", "attacks": ["apgd-ce"]},
            })
    return rows


BAD_VALUES = [None, "x", [], {}, -1, True, float("nan"), float("inf"), [1, "a"], {"k": "v"}]
FIELDS = sorted({*_rows()[1], "cost.epochs", "settings.target_macs", "eval_settings.eps", "eval_settings.attacks"})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=st.sampled_from(BAD_VALUES), which=st.integers(0, 5))
def test_report_on_a_mangled_row_renders_or_refuses_cleanly(field: str, value: object, which: int, tmp_path: Path) -> None:
    rows = _rows()
    table, _, key = field.partition(".")
    target = rows[which] if not key else rows[which].setdefault(table, {})
    target[key or table] = value
    d = tmp_path / f"run-{abs(hash((field, repr(value), which)))}"
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, _out, err = run_cli(["report", str(d)])
    assert "internal error" not in err and "Traceback" not in err, err
    assert code == 0 or err.startswith("robustprune: error:"), err
