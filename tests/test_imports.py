"""The import graph of the package: no cycle anywhere, and the pure modules stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import alctl

ROOT = Path(alctl.__file__).parent
PURE = ("alctl.strategies", "alctl.knn", "alctl.propagate", "alctl.train", "alctl.pretrain", "alctl.models",
        "alctl.augment", "alctl.metrics")


def _module_name(path: Path) -> str:
    """alctl.x.y of a file under the package (a package's __init__ is the package itself)."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> alctl modules it imports, at module level or inside functions (lazy imports count too)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # `import alctl.x.y` names a module or a name in one
                    t = t.rpartition(".")[0]
                if t and t != name and t != "alctl":
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_is_read_and_finds_a_planted_cycle() -> None:
    graph = import_graph()
    assert "alctl.engine.cycle" in graph["alctl.engine.commands"]
    assert "alctl.knn" in graph["alctl.propagate.graph"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_pure_modules_import_neither_the_engine_nor_user_errors() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(PURE):
            bad = {d for d in deps if d.startswith(("alctl.engine", "alctl.cli", "alctl.store", "alctl.data",
                                                   "alctl.errors", "alctl.console", "alctl.jobs", "alctl.report"))}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_arrows_point_down() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if not name.startswith("alctl.cli"):
            assert "alctl.cli" not in deps, name
        if not name.startswith(("alctl.cli", "alctl.engine")):
            assert not any(d.startswith("alctl.engine") for d in deps), f"{name} imports the engine"


def test_the_schema_and_the_plan_load_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, alctl.manifest, alctl.identity, alctl.plan, alctl.report; "
            "loaded = [m for m in ('torch', 'torchvision', 'alctl.strategies.registry') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_annotation_package_does_not_reach_up_into_the_engine() -> None:
    graph = import_graph()
    annotate = [m for m in graph if m.startswith("alctl.annotate")]
    assert {"alctl.annotate.labels", "alctl.annotate.labelstudio", "alctl.annotate.sheet"} <= set(annotate)
    for module in annotate:
        assert not {t for t in graph[module] if t.startswith(("alctl.engine", "alctl.cli", "alctl.manifest"))}, module
