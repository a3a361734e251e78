"""Assemble ``benchmarks/RESULTS.md`` from the per-benchmark outputs in ``benchmarks/results/``.

Every section is written by the script named in its ``Command:`` line; this one only puts
them in order under one header, shifting their headings one level down and pointing image
links at ``results/``. It measures nothing itself.

    python benchmarks/collect_results.py
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (part title, result files in order)
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Quality: what keeps a pruned model robust (criteria, schedules, budgets, distillation, regularizers against the default pipeline and scratch)", ("quality-cnn.md", "quality-resnet.md")),
    ("Paper reproduction", ("paper.md",)),
    ("Speed, all benchmarks side by side: CPU, then the same on an H100", ("speed.md", "speed-cuda.md", "gpu.md")),
    ("Recipe runs (and the CIFAR recipe on an H100)", ("digits-cnn.md", "digits-fcn-nnr.md", "cifar10-gpu.md")),
    ("Defaults and documented times: CPU threads, the commands the docs quote", ("threads.md", "doc_timings.md")),
    (
        "Component benchmarks: full detail",
        ("prune.md", "regularizers.md", "train.md", "eval.md"),
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    lines = [
        "# robustprune: measured results",
        "",
        "Every table below was written by a committed script; its command stands next to it. "
        "CPU numbers come from this project's machine (2 x86-64 cores, 24 GiB, no GPU), GPU numbers "
        "from a lent NVIDIA H100 80GB (HBM3). Regenerate this file with "
        "`python benchmarks/collect_results.py` after rerunning any benchmark.",
        "",
        "Contents:",
    ]
    body: list[str] = []
    for i, (title, files) in enumerate(PARTS, 1):
        lines.append(f"{i}. [{title}](#{_anchor(f'{i}. {title}')})")
        body += ["", f"## {i}. {title}", ""]
        for name in files:
            path = args.results / name
            if not path.is_file():
                body += [f"*{name}: not produced yet (run its script).*", ""]
                continue
            body += [_demote(path.read_text()), ""]
    args.out.write_text("\n".join(lines + body).rstrip() + "\n")
    print(f"wrote {args.out}")
    return 0


def _demote(text: str) -> str:
    """Headings one level down; image links relative to benchmarks/."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = "#" + line
        line = re.sub(r"\]\((?!https?:|/|results/|\.\./)([^)]+\.png)\)", r"](results/\1)", line)
        out.append(line)
    return "\n".join(out).strip()


def _anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


if __name__ == "__main__":
    sys.exit(main())
