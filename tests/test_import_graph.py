"""No import circles: the project's modules form a directed acyclic graph.

Every ``import`` statement counts, also those inside functions (a deferred import that dodges a
circle at load time is still a circle in the design); only ``if TYPE_CHECKING:`` blocks, which never
run, are left out. Registry discovery (importing every module of a package by name) is not an edge.

pipeline/'s rooms are imported in one order (``ROOMS``: a room imports only the rooms before it, the
entry points at pipeline/'s top level import any room, and no room imports them); here every import
counts, ``if TYPE_CHECKING:`` blocks included, since a type a room names is a thing it depends on.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "pipeline", "tasks", "registries")
ROOMS = ("config", "results", "train", "evaluation")  # pipeline/'s subpackages, in import order
ENTRY_POINTS = ("pipeline", "pipeline.run", "pipeline.eval_run", "pipeline.failures")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST, type_checking: bool = False) -> list[ast.stmt]:
    """Import statements outside ``if TYPE_CHECKING:`` blocks (inside them too with ``type_checking``)."""
    out: list[ast.stmt] = []

    def visit(node: ast.AST) -> None:
        if not type_checking and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(packages: tuple[str, ...], type_checking: bool = False) -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in packages for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in runtime_imports(ast.parse(path.read_text()), type_checking):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_deferred_import_is_an_edge_and_type_checking_is_not():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
                     "def f():\n    import y\n")
    assert [n.names[0].name for n in runtime_imports(tree)] == ["TYPE_CHECKING", "y"]


def test_no_import_circles():
    graph = import_graph(PACKAGES)
    assert {"pipeline.config.schema", "pipeline.config.stage"} <= graph["pipeline.config.resolve"]  # read, not empty
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def room_rank(module: str) -> int | None:
    """Where a module sits in the import order: its room's index, len(ROOMS) for an entry point, None outside."""
    if module in ENTRY_POINTS:
        return len(ROOMS)
    parts = module.split(".")
    if parts[0] != "pipeline":
        return None
    assert len(parts) > 2 and parts[1] in ROOMS, f"{module}: pipeline/'s top level holds only {ROOMS} and entry points"
    return ROOMS.index(parts[1])


def order_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs up the order: a room importing a later room or an entry point, or models/,
    tasks/ or registries/ importing pipeline/."""
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            to = room_rank(dst)
            if to is None:
                continue
            at = room_rank(src)
            if at is None or to > at:
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def test_the_order_check_finds_an_import_up_the_order():
    graph = {"pipeline.config.a": {"pipeline.train.b"}, "pipeline.train.b": {"pipeline.config.a"},
             "models.x": {"pipeline.results.c"}, "pipeline.run": {"pipeline.evaluation.d"},
             "pipeline.evaluation.d": {"pipeline.run"}}
    assert order_violations(graph) == ["models.x -> pipeline.results.c", "pipeline.config.a -> pipeline.train.b",
                                       "pipeline.evaluation.d -> pipeline.run"]


def test_pipeline_rooms_import_only_down_the_order():
    graph = import_graph(PACKAGES, type_checking=True)
    assert "pipeline.config.resolve" in graph["pipeline.train.fit"]  # a TYPE_CHECKING import is read
    assert order_violations(graph) == []


def test_pipeline_top_level_is_the_rooms_and_the_entry_points():
    top = sorted(p.name for p in (ROOT / "pipeline").iterdir() if p.name != "__pycache__")
    entries = sorted(f"{m.rpartition('.')[2]}.py" for m in ENTRY_POINTS if m != "pipeline")
    assert top == sorted(["__init__.py", *ROOMS, *entries])


def test_models_tasks_and_registries_import_only_registries():
    """docs/architecture.md's table: models/ and tasks/ are independent; registries/ imports nothing of ours."""
    graph = import_graph(PACKAGES, type_checking=True)
    allowed = {"models": {"models", "registries"}, "tasks": {"tasks", "registries"}, "registries": {"registries"}}
    bad = sorted(f"{src} -> {dst}" for src, targets in graph.items() for dst in targets
                 if src.split(".")[0] in allowed and dst.split(".")[0] not in allowed[src.split(".")[0]])
    assert bad == []
