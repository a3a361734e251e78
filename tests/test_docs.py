"""The docs run as written: every ```python and ```bash block of README.md and docs/*.md.

Each block runs on its own: a python block in a fresh interpreter (``python -c``), a bash
block through ``bash -e``, both with ``PYTHONPATH`` = this checkout, the interpreter's
``bin/`` (``robustprune``, ``torchrun``, ``python``) first on ``PATH``, one CPU thread
(``OMP_NUM_THREADS=1``, no GPU) and, as working directory, one scratch folder per document
that holds links to ``recipes/``, ``examples/`` and ``benchmarks/``. Blocks of one document
run in document order in that folder, so a block may use a file an earlier block of the same
document wrote (``dense.pt``), but never a Python name: every snippet is self-contained.

``text``, ``toml`` and unmarked blocks are not run; ``toml`` blocks must parse with the recipe
parser. Directives are HTML comments on the lines right above a block (invisible on GitHub):

- ``<!-- doc-test: skip REASON -->``: not run here (a GPU, data we do not have, minutes of
  work); the reason is shown by ``pytest -rs``. Timed ones run in ``benchmarks/doc_timings.py``.
- ``<!-- doc-test: replace OLD => NEW -->``: run with the literal text OLD replaced by NEW
  (smaller settings in CI; OLD must occur in the block). May repeat.
- ``<!-- doc-test: env KEY=VALUE ... -->``: extra environment variables.
- ``<!-- doc-test: timeout SECONDS -->``: the limit (default 240 s).
- ``<!-- doc-test: file PATH -->``: the block shows the file PATH of this checkout: it must be
  identical to it, and is run where the docs run the file.

Blocks in README sections that this file may not change carry their directives in
``EXTERNAL`` below, keyed by a unique piece of the block.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "bash")
LINKED = ("recipes", "examples", "benchmarks")
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(\w[\w-]*)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)")
DEFAULT_TIMEOUT = 240

#: directives for blocks whose markdown this helper does not edit (README's recipes section):
#: {(document name, a piece of the block's text): [directive lines]}
EXTERNAL: dict[tuple[str, str], list[str]] = {
    ("README.md", "make demo   #"): [
        "skip make demo is the 6-minute main job (benchmarks/doc_timings.py times it); "
        "make test runs this file"],
    ("README.md", "robustprune run recipes/digits-tiny.toml"): [
        "skip several recipe runs of one to fifteen minutes, CIFAR data and a GPU: "
        "benchmarks/doc_timings.py times them"],
}


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"


def parse_blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a markdown file, with the doc-test directives above it."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks, pending, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        d = DIRECTIVE.match(line.strip())
        if d:
            pending.append((d.group(1), d.group(2)))
            i += 1
            continue
        f = FENCE.match(line)
        if f:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if j == len(lines):
                raise ValueError(f"{path.name}:{i + 1}: unclosed code block")
            blocks.append(Block(path, i + 1, f.group(1), "\n".join(lines[i + 1:j]) + "\n", pending))
            pending, i = [], j + 1
            continue
        if line.strip() and pending:
            raise ValueError(f"{path.name}:{i + 1}: a doc-test directive must sit right above a block")
        i += 1
    for block in blocks:
        for (doc, piece), extra in EXTERNAL.items():
            if doc == path.name and piece in block.code:
                block.directives += [tuple((item.split(" ", 1) + [""])[:2]) for item in extra]
    return blocks


@dataclass
class Plan:
    code: str
    env: dict[str, str]
    timeout: int = DEFAULT_TIMEOUT
    skip: str | None = None
    file: Path | None = None


def prepare(block: Block) -> Plan:
    """What to run, with which environment and limit, or why not, from the block's directives."""
    code, env, timeout, skip, file = block.code, {}, DEFAULT_TIMEOUT, None, None
    for name, arg in block.directives:
        if name == "file":
            file = ROOT / arg
            if not file.is_file():
                raise ValueError(f"{block.id}: file {arg!r} does not exist")
        elif name == "skip":
            if not arg:
                raise ValueError(f"{block.id}: 'skip' needs a reason")
            skip = arg
        elif name == "replace":
            old, sep, new = arg.partition(" => ")
            if not sep or old not in code:
                raise ValueError(f"{block.id}: replace {old!r}: not in the block (or no ' => ')")
            code = code.replace(old, new)
        elif name == "env":
            for item in shlex.split(arg):
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"{block.id}: env {item!r}: expected KEY=VALUE")
                env[key] = value
        elif name == "timeout":
            timeout = int(arg)
        else:
            raise ValueError(f"{block.id}: unknown doc-test directive {name!r}")
    return Plan(code, env, timeout, skip, file)


ALL = [b for doc in DOCS for b in parse_blocks(doc)]
RUNNABLE = [b for b in ALL if b.lang in RUN]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    made: dict[str, Path] = {}

    def get(doc: Path) -> Path:
        if doc.name not in made:
            d = tmp_path_factory.mktemp(doc.stem)
            for name in LINKED:
                if (ROOT / name).exists():
                    (d / name).symlink_to(ROOT / name, target_is_directory=True)
            made[doc.name] = d
        return made[doc.name]

    return get


def run_block(code: str, lang: str, cwd: Path, extra_env: dict[str, str], timeout: int):
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PATH=bindir + os.pathsep + env.get("PATH", ""), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    env.update(extra_env)
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-o", "pipefail", "-c", code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize(
    "block",
    # under pytest-xdist (make test: -n 2 --dist loadgroup) a document's blocks stay in one
    # worker, in order, sharing that document's folder
    [pytest.param(b, marks=pytest.mark.xdist_group(f"doc-{b.doc.name}")) for b in RUNNABLE],
    ids=[b.id for b in RUNNABLE],
)
def test_block_runs(block, workdirs):
    plan = prepare(block)
    if plan.file is not None:
        assert block.code == plan.file.read_text(), f"{block.id} differs from {plan.file.relative_to(ROOT)}"
        return
    if plan.skip:
        pytest.skip(f"{block.id}: {plan.skip}")
    proc = run_block(plan.code, block.lang, workdirs(block.doc), plan.env, plan.timeout)
    assert proc.returncode == 0, (
        f"{block.id} ({block.lang}) failed with exit code {proc.returncode}\n--- code\n{plan.code}"
        f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "toml"],
                         ids=[b.id for b in ALL if b.lang == "toml"])
def test_toml_block_is_a_valid_recipe(block, tmp_path):
    from robustprune.recipe import load_recipe

    path = tmp_path / "recipe.toml"
    path.write_text(block.code)
    load_recipe(path)


def test_every_block_is_run_or_skipped_with_a_reason():
    """No runnable block escapes: each is run, or skipped with a reason (and directives parse)."""
    assert len(RUNNABLE) >= 20
    for block in RUNNABLE:
        prepare(block)  # raises on a bad directive or a replace that no longer matches
    langs = {b.lang for b in ALL}
    assert langs <= {"python", "bash", "text", "toml", ""}, langs


def test_directives_are_checked(tmp_path):
    doc = tmp_path / "x.md"
    text = ("<!-- doc-test: replace epochs=20 => epochs=1 -->\n```python\nfit(epochs=20)\n```\n\n"
            "<!-- doc-test: replace nothing => x -->\n```bash\necho hi\n```\n\n"
            "<!-- doc-test: skip -->\n```bash\nfalse\n```\n"
            "<!-- doc-test: skipp GPU -->\n```bash\nfalse\n```\n")
    first, second, third, fourth = parse_blocks(doc, text)
    assert prepare(first).code == "fit(epochs=1)\n"
    for bad, message in ((second, "not in the block"), (third, "needs a reason"), (fourth, "unknown")):
        with pytest.raises(ValueError, match=message):
            prepare(bad)
    with pytest.raises(ValueError, match="right above"):
        parse_blocks(doc, "<!-- doc-test: skip GPU -->\nsome text\n```bash\nx\n```\n")


def test_a_failing_block_fails(tmp_path):
    proc = run_block("import robustprune\nraise SystemExit(robustprune.__name__ == 'robustprune')\n",
                     "python", tmp_path, {}, 60)
    assert proc.returncode == 1
    proc = run_block("false\necho unreachable\n", "bash", tmp_path, {}, 60)
    assert proc.returncode == 1 and "unreachable" not in proc.stdout
