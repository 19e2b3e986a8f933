"""The package layout keeps its promises: no import cycles inside `sf`, no imports hidden in
functions to dodge one, layers call downward only, and docs/architecture.md's map matches the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sf.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "sf"
ARCHITECTURE = PROJECT_ROOT / "docs" / "architecture.md"

# Lower layers never import higher ones (a module may import its own layer).
LAYERS = [
    {"sf.config", "sf.errors", "sf.security", "sf.ratelimit", "sf.redis_pipeline", "sf.redis_client",
     "sf.cache",
     "sf.observability", "sf.alerts", "sf.outbound"},
    {"sf.db", "sf.media", "sf.schemas"},
    {"sf.actors"},
    {"sf.services"},
    {"sf.handlers"},
    {"sf.node", "sf.ops"},
    {"sf.app"},  # the `sf` command: composes the application and hands it to the node runners
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sf_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The `sf…` modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "sf"]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target.split(".")[0] != "sf":
        return []
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def module_imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the `sf` modules it imports at import time (TYPE_CHECKING blocks excluded)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in _import_time_imports(tree):
            for name in imported_names(node, module, path.name == "__init__.py"):
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def _import_time_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node.test):
            found.extend(n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
        elif isinstance(node, ast.Try):
            found.extend(n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def layer_of(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in layer):
            return index
    return None


def test_there_is_no_import_cycle_inside_sf():
    assert find_cycle(module_imports(sf_modules())) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_of_sf_hides_inside_a_function():
    hidden = []
    for module, path in sf_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom) and imported_names(
                            inner, module, path.name == "__init__.py"):
                        hidden.append(f"{module}:{inner.lineno}")
    assert hidden == []


def test_layers_call_downward_only():
    upward = []
    for module, targets in module_imports(sf_modules()).items():
        own = layer_of(module)
        if own is None:
            continue
        for target in targets:
            other = layer_of(target)
            if other is not None and other > own:
                upward.append(f"{module} → {target}")
    assert upward == []


def test_every_module_belongs_to_a_layer():
    assert [m for m in sf_modules() if m != "sf" and layer_of(m) is None] == []


def architecture_map() -> set[str]:
    """The paths in the first column of docs/architecture.md's "Module map" table."""
    text = ARCHITECTURE.read_text()
    start = text.index("## Module map")
    end = text.find("\n## ", start + 1)
    table = text[start:end if end != -1 else len(text)]
    return set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE))


def tree_paths() -> set[str]:
    """Every module of `sf` as a path (`sf/db/pool.py`), every package as its folder (`sf/db/`)."""
    paths = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PROJECT_ROOT).as_posix()
        if path.name == "__init__.py" and path.parent != PACKAGE:
            relative = relative.removesuffix("__init__.py")
        paths.add(relative)
    return paths


def test_every_module_of_sf_is_on_the_architecture_map():
    assert sorted(tree_paths() - architecture_map()) == [], "on disk but not in docs/architecture.md"


def test_every_module_on_the_architecture_map_exists():
    assert sorted(architecture_map() - tree_paths()) == [], "in docs/architecture.md but not on disk"


def test_every_path_the_architecture_page_names_exists():
    """Besides the map, the page's tables name folders around the package (conf/, sql/, …)."""
    named = set(re.findall(r"^\| `([\w./-]+)` \|", ARCHITECTURE.read_text(), flags=re.MULTILINE))
    assert sorted(name for name in named if not (PROJECT_ROOT / name).exists()) == []
