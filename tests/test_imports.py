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


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except what sits under `if TYPE_CHECKING:` (imports for annotations only)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def import_graph() -> dict[str, set[str]]:
    """module -> alctl modules it imports at run time, at module level or inside functions (lazy imports count
    too; imports under `if TYPE_CHECKING:`, for annotations only, do not)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
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
    assert "alctl.config.checks" in graph["alctl.config.schema"]
    assert "alctl.config.schema" not in graph["alctl.config.checks"]  # only under TYPE_CHECKING there
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

    code = ("import sys, alctl.config, alctl.config.identity, alctl.plan, alctl.report; "
            "loaded = [m for m in ('torch', 'torchvision', 'alctl.strategies.registry') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_annotation_package_does_not_reach_up_into_the_engine() -> None:
    graph = import_graph()
    annotate = [m for m in graph if m.startswith("alctl.annotate")]
    assert {"alctl.annotate.labels", "alctl.annotate.labelstudio", "alctl.annotate.sheet"} <= set(annotate)
    for module in annotate:
        assert not {t for t in graph[module] if t.startswith(("alctl.engine", "alctl.cli", "alctl.config"))}, module


# The configuration layer (the schema, its rules and the identity of a task) and what it may import: the bottom.
CONFIG = ("alctl.config", "alctl.manifest", "alctl.identity")  # the package and its former import paths
BELOW_CONFIG = ("alctl.errors", "alctl.safe_text", "alctl.strategies.catalog", "alctl.strategies.params")


def test_the_former_import_paths_are_the_same_modules() -> None:
    import alctl.config.identity
    from alctl import config, identity, manifest

    assert manifest is config and identity is alctl.config.identity
    assert manifest.Manifest is config.Manifest


def test_the_configuration_is_the_bottom_layer_and_only_the_cli_imports_the_engine() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(CONFIG):
            above = {d for d in deps if not d.startswith(CONFIG + BELOW_CONFIG)}
            assert not above, f"{name} (configuration) imports {sorted(above)}"
        if name.startswith(BELOW_CONFIG):
            assert not any(d.startswith(CONFIG) for d in deps), f"{name} is below the configuration but imports it"
        if not name.startswith(("alctl.cli", "alctl.engine")):
            assert not any(d.startswith("alctl.engine") for d in deps), f"{name} imports the engine"
    users = {name for name, deps in graph.items() if not name.startswith("alctl.engine")
             and any(d.startswith("alctl.engine") for d in deps)}
    assert users == {"alctl.cli"}

