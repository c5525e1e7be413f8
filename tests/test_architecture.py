"""labkit's architecture, checked from its source: no import cycle (lazy imports inside functions
included: they hide a cycle, they do not remove it) and no private name used outside its module."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "labkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_from(path: Path):
    """(module, alias) for every `from labkit... import name` in PATH, relative imports resolved, at the top or
    inside a function."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            if module.startswith("labkit"):
                yield from ((module, a) for a in node.names)


def internal_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every labkit import in PATH, at the top or inside a function."""
    out = [(f"{m}.{a.name}", None) if f"{m}.{a.name}" in MODULES else (m, a.name) for m, a in imported_from(path)]
    return out + [(a.name, None) for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
                  for a in node.names if a.name.startswith("labkit")]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in internal_imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_private_name_is_used_outside_its_module():
    borrowed = [f"{m} uses {t}.{name}" for m, p in MODULES.items() for t, name in internal_imports(p)
                if name and name.startswith("_") and not name.startswith("__") and t != m]
    assert borrowed == []


def module_aliases(path: Path) -> dict[str, str]:
    """{name bound in PATH: the labkit module it names} for `from labkit import data`-style imports."""
    return {(a.asname or a.name): f"{m}.{a.name}" for m, a in imported_from(path) if f"{m}.{a.name}" in MODULES}


def test_no_private_attribute_of_another_module_is_read():
    """`data._key` from another module is a private name used outside its module, as `from .data import _key` is."""
    borrowed = []
    for m, p in MODULES.items():
        aliases = module_aliases(p)
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != m):
                borrowed.append(f"{m} reads {aliases[node.value.id]}.{node.attr}")
    assert borrowed == []


def test_no_labkit_module_is_longer_than_500_lines():
    """The library is the textbook: a file a learner can read in one sitting, one idea each."""
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_every_labkit_package_is_installed():
    """pyproject finds the packages (a hand-written list missed new ones); each folder with an __init__ is found."""
    import setuptools
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(setuptools.find_packages(str(ROOT), include=config["include"]))
    folders = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= found and "labkit.ship" in found and "labkit.course" in found


# A lazy labkit import inside a function hides the module's dependencies from its reader; they sit at the top
# of the file. Lazy imports stay only for heavy optional libraries (torch, transformers, peft, ...).
LAZY_ALLOWED = {
    "labkit.course.cli",  # a command dispatcher: each command imports its own modules, so `labkit --help` is instant
    "labkit.check.registry",  # loads every labkit.checks.lessonNN on first use: they import the registry
}


def lazy_internal_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("labkit")):
                    names = ", ".join(x.name for x in node.names)
                    out.append(f"{module_name(path)}:{node.lineno} from {'.' * node.level}{node.module or ''} import {names}")
    return out


def test_labkit_imports_sit_at_the_top_of_each_file():
    lazy = [hit for m, p in MODULES.items() if m not in LAZY_ALLOWED for hit in lazy_internal_imports(p)
            if not (m == "labkit.scale.run" and hit.endswith("from .. import qlora"))]  # it imports bitsandbytes
    assert lazy == []
