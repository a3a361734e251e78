"""The layout rules of docs/architecture.md, checked on the source tree.

Every module of the package is at most 400 lines and has one job; modules import each other
without cycles (imports inside functions count: a lazy import does not make a cycle go
away; ``if TYPE_CHECKING:`` imports do not run and do not count); no module reaches into
another module's ``_private`` names; torch-pruning is imported in one place only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "robustprune"
MAX_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_POSITIONAL = 8


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every import that runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(target: str, names: list[str]) -> list[str]:
    """The robustprune modules an import makes Python execute."""
    if not target.startswith("robustprune"):
        return []
    hit = [target] if target in MODULES else []
    hit += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return hit


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names, _ in _imports(module, path):
            for dep in _resolve(target, names):
                # importing a submodule runs its parent packages' __init__ too
                parts = dep.split(".")
                for i in range(1, len(parts) + 1):
                    parent = ".".join(parts[:i])
                    if parent in MODULES and parent != module and not module.startswith(parent + "."):
                        graph[module].add(parent)
    return graph


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_is_at_most_400_lines(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (limit {MAX_LINES}): split it by job"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_are_short_and_take_few_positional_parameters(module: str) -> None:
    # at most 80 lines of code (the docstring not counted) and 8 positional parameters
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                length -= body[0].end_lineno - body[0].lineno + 1  # the docstring is documentation, not code
            positional = [a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
            assert length <= MAX_FUNCTION_LINES, f"{module}.{node.name} is {length} lines"
            assert len(positional) <= MAX_POSITIONAL, f"{module}.{node.name} takes {len(positional)} positional"


def test_modules_import_each_other_without_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_imports_another_modules_private_names() -> None:
    offences = []
    for module, path in MODULES.items():
        for target, names, line in _imports(module, path):
            if not target.startswith("robustprune"):
                continue
            private = [
                n for n in names
                if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in MODULES
            ]
            if private and target != module:
                offences.append(f"{path.name}:{line} imports {', '.join(private)} from {target}")
    assert not offences, "\n".join(offences)


def test_no_module_reads_private_attributes_of_another_module() -> None:
    offences = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}
        for target, names, _ in _imports(module, path):
            for n in names:
                if f"{target}.{n}" in MODULES:
                    aliases[n] = f"{target}.{n}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES and a.asname:
                        aliases[a.asname] = a.name
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and f"{aliases[node.value.id]}.{node.attr}" not in MODULES
            ):
                offences.append(f"{path.name}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not offences, "\n".join(offences)


def test_torch_pruning_is_imported_in_one_module_only() -> None:
    users = sorted({
        module
        for module, path in MODULES.items()
        for target, _, _ in _imports(module, path)
        if target.split(".")[0] == "torch_pruning"
    })
    assert users == ["robustprune.pruners._tp"], users


def test_pruners_analysis_and_metrics_do_not_import_the_model_zoo() -> None:
    # example inputs come from robustprune._inputs, which reads model.robustprune_spec
    for module, path in MODULES.items():
        if module.startswith(("robustprune.pruners", "robustprune.analysis", "robustprune.metrics")):
            targets = {t for t, _, _ in _imports(module, path)}
            assert not any(t == "robustprune.models" or t.startswith("robustprune.models.") for t in targets), module


def test_the_checks_see_the_whole_package() -> None:
    # a guard against the checks above passing vacuously
    assert len(MODULES) > 30
    assert any(_imports(m, p) for m, p in MODULES.items())
    assert _graph()["robustprune.pruners"]
