"""The pruners package's shape: small one-job files, torch-pruning behind one module, no
import cycles, no private names shared across modules, no dependency on the model zoo."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robustprune" / "pruners"
FILES = sorted(PACKAGE.glob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every import in the file, functions included,
    ``if TYPE_CHECKING:`` blocks excluded."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def _robustprune_deps(path: Path) -> set[str]:
    deps = set()
    for module, names in _imports(path):
        if not module.startswith("robustprune"):
            continue
        submodules = [f"{module}.{n}" for n in names if _is_module(f"{module}.{n}")]
        deps.update(submodules)
        if not names or len(submodules) < len(names):  # names defined by the module itself
            deps.add(module)
    return deps


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_is_small_and_its_functions_short(path):
    source = path.read_text()
    assert source.count("\n") <= 400
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 80, node.name
            positional = [a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
            assert len(positional) <= 8, node.name


def test_torch_pruning_is_imported_only_by_the_tp_module_and_the_model_zoo_never():
    for path in FILES:
        modules = {m for m, _ in _imports(path)}
        if path.name != "_tp.py":
            assert not any(m.split(".")[0] == "torch_pruning" for m in modules), path.name
        assert not any(m == "robustprune.models" or m.startswith("robustprune.models.") for m in modules), path.name


def test_no_private_name_is_imported_across_modules():
    for path in FILES:
        for module, names in _imports(path):
            if module.startswith("robustprune"):
                private = [n for n in names if n.startswith("_") and not _is_module(f"{module}.{n}")]
                assert not private, f"{path.name} imports {private} from {module}"


def test_no_import_cycle_passes_through_the_pruners():
    graph: dict[str, set[str]] = {}
    todo = list(FILES)
    while todo:
        path = todo.pop()
        name = _module_name(path)
        if name in graph:
            continue
        graph[name] = {d for d in _robustprune_deps(path) if d != name}
        for dep in graph[name]:
            dep_path = ROOT.joinpath(*dep.split("."))
            dep_file = dep_path.with_suffix(".py") if dep_path.with_suffix(".py").is_file() else dep_path / "__init__.py"
            if dep not in graph and dep_file.is_file():
                todo.append(dep_file)

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    for path in FILES:
        name = _module_name(path)
        cyclic = [d for d in graph[name] if reaches(d, name)]
        assert not cyclic, f"{name} is on an import cycle through {cyclic}"
