"""The package's imports, read from its source: one import name (``videobert``), the project's own
imports at the top of each module where a reader sees them, and no circles between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("models", "shards", "trainer", "launch")
OLD_NAMES = ("trainer", "models", "shards")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {"videobert": ROOT / "__init__.py"}
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("videobert",) + (parts[:-1] if parts[-1] == "__init__" else parts))
            found[name] = path
    return found


MODULES = _modules()


def _project_imports(node: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of each ``import``/``from`` of the project in ``node`` (not below it)."""
    found = []
    if isinstance(node, ast.Import):
        found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in ("videobert",) + OLD_NAMES]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        if base.split(".")[0] in ("videobert",) + OLD_NAMES:
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else base))
    return found


def _top_level_imports(module: str) -> list[tuple[int, str]]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in tree.body:
        blocks = [node]
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            continue  # runs only as a program, after every module it names is loaded
        if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING:` and guarded imports run at import, too
            blocks = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
        for block in blocks:
            found += _project_imports(block, module)
    return found


def test_every_module_imports_the_project_as_videobert():
    wrong = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for line, name in _project_imports(node, module):
                if name.split(".")[0] != "videobert":
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not wrong, "imports of the bare top-level folders (use videobert.*):\n" + "\n".join(wrong)


def test_the_projects_own_imports_sit_at_the_top_of_each_module():
    """An import of the project inside a function hides a dependency from the file's header; the
    one allowed kind says why on its line (a registration that must follow the module's definitions)."""
    inside = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in {id(i): i for f in functions for i in ast.walk(f)}.values():
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if not _project_imports(node, module):
                continue
            if "#" in lines[node.lineno - 1] or (node.lineno > 1 and lines[node.lineno - 2].strip().startswith("#")):
                continue
            inside.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not inside, "project imports inside functions, without a comment saying why:\n" + "\n".join(inside)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_two_modules_import_each_other_even_through_others():
    graph = {}
    for module in MODULES:
        targets = set()
        for _, name in _top_level_imports(module):
            # `import videobert.a.b` also runs videobert.a's __init__; a package's __init__ is not a cycle edge
            # of its own submodules unless it imports them
            if name in MODULES and name != module:
                targets.add(name)
        graph[module] = targets
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("folder", PACKAGE_FOLDERS[:3])
def test_every_package_folder_is_a_declared_package(folder):
    """pyproject lists packages by hand (the folders map onto ``videobert.*``): a new subfolder with
    modules that is not listed would be left out of the wheel."""
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    for init in (ROOT / folder).rglob("__init__.py"):
        dotted = ".".join(("videobert",) + init.parent.relative_to(ROOT).parts)
        assert dotted in declared, f"{init.parent.relative_to(ROOT)} holds a package missing from pyproject's packages"
    for path in (ROOT / folder).rglob("*.py"):
        assert (path.parent / "__init__.py").exists(), f"{path.relative_to(ROOT)} sits in a folder that is not a package"


def test_arrows_point_one_way():
    """``trainer`` imports ``models`` and ``shards``; ``models`` and ``shards`` never import ``trainer``;
    ``models`` never imports ``shards``."""
    forbidden = {"videobert.models": ("videobert.trainer", "videobert.shards"), "videobert.shards": ("videobert.trainer",)}
    wrong = []
    for module, path in MODULES.items():
        for room, banned in forbidden.items():
            if module != room and not module.startswith(room + "."):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                for line, name in _project_imports(node, module):
                    if name.startswith(banned):
                        wrong.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not wrong, "imports against the arrows:\n" + "\n".join(wrong)
