"""The package layout is the architecture: imports run one way, with no cycles anywhere.

Read from the source's AST, so imports inside functions and under TYPE_CHECKING count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.settings import PACKAGE_DIR
from app.tasks.types import task_types

# Lower layers never import higher ones; batch, review and training are peers that share nothing
# (the composition root hands review what it reads of batch jobs).
LAYERS: dict[str, int] = {
    "app.settings": 0,
    "app.problems": 0,
    "app.logs": 0,
    "app.engine": 1,
    "app.tasks": 2,
    "app.api": 3,
    "app.batch": 4,
    "app.review": 4,
    "app.training": 4,
    "app.main": 5,
    "app.cli": 5,
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[Edge]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "app":
                    yield Edge(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            if origin.split(".")[0] != "app":
                continue
            for alias in node.names:
                # `from package import module` imports the module; otherwise the name is in origin.
                child = f"{origin}.{alias.name}"
                yield Edge(name, child if child in known else origin, node.lineno)


def graph() -> list[Edge]:
    known = modules()
    return [edge for name, path in known.items() for edge in imports(name, path, known)]


def layer(module: str) -> tuple[str, int]:
    for prefix, rank in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
        succ.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in succ[v]:
                found.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read_from_every_module() -> None:
    edges = graph()
    sources = {e.source for e in edges}
    assert {"app.api.app", "app.tasks.runner", "app.engine.local", "app.batch.jobs", "app.training.demo"} <= sources
    # Function-level imports are edges too (the CLI imports its subcommands lazily).
    assert any(e.source == "app.cli" and e.target == "app.training.demo" for e in edges)


def test_no_module_takes_part_in_an_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    edges = [Edge("a", "b", 1), Edge("b", "c", 1), Edge("c", "a", 9), Edge("c", "d", 2)]
    assert cycles(edges) == [["a", "b", "c"]]


def test_imports_go_one_way_http_then_tasks_then_engine() -> None:
    wrong = []
    for e in graph():
        (src_pkg, src_rank), (dst_pkg, dst_rank) = layer(e.source), layer(e.target)
        peers_crossing = src_rank == dst_rank and src_pkg != dst_pkg and src_rank == LAYERS["app.batch"]
        if dst_rank > src_rank or peers_crossing:
            wrong.append(f"{e.source}:{e.line} imports {e.target}")
    assert wrong == []


# Layers that must stay the same whatever the task types are: no `if type == "ner"` there.
TYPE_AGNOSTIC = [
    *("api", "batch", "engine", "review", "tasks"),
    *("training/datasets.py", "training/evaluate.py", "training/train.py"),
]


def _type_agnostic_files() -> list[Path]:
    files: list[Path] = []
    for entry in TYPE_AGNOSTIC:
        target = PACKAGE_DIR / entry
        files += [target] if target.is_file() else sorted(target.rglob("*.py"))
    return [f for f in files if "types" not in f.relative_to(PACKAGE_DIR).parts]


@pytest.mark.parametrize("path", _type_agnostic_files(), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_shared_code_never_branches_on_a_task_type(path: Path) -> None:
    names = {name for kind in task_types().values() for name in (kind.name, kind.endpoint)}
    branches = [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Compare)
        and any(isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators])
    ]
    assert branches == []


def test_each_task_type_is_one_module_in_the_types_package() -> None:
    kinds = task_types()
    assert set(kinds) >= {"ner", "qa", "classification"}
    for kind in kinds.values():
        module = type(kind).__module__
        assert module.startswith("app.tasks.types.") and module != "app.tasks.types.base", module
    assert len({type(k).__module__ for k in kinds.values()}) == len(kinds)
    assert len({k.endpoint for k in kinds.values()}) == len(kinds)
