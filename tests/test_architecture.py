"""The project's floors import downward only, its modules form no import cycle, and library files stay short;
the tests mirror the floors and import by name.

Floors, from the bottom:

0. the library ``labelfree/``: imports no ``hydra``, no ``omegaconf``, nothing from ``experiments``,
   ``scripts`` or ``run``;
1. the studies ``experiments/``: may import the library, hydra and omegaconf, not ``scripts`` or ``run``;
2. ``scripts/`` and ``run.py``: may import anything.

Imports are read with :mod:`ast` (nothing is imported): ``import X``, ``from X import Y`` (``X.Y`` when it
is a module of the project, else ``X``), relative imports resolved to absolute names, string literals
passed to ``importlib.import_module`` / ``__import__``, and lazy import targets ``"package.module:function"``
in module-level constants. Imports inside functions count; imports under ``if TYPE_CHECKING:`` count for
the floors but not for cycles. An import of a package is an import of its ``__init__`` only (importing
``a.b.c`` is an edge to ``a.b.c``, not to ``a`` or ``a.b``), so the re-export pattern (a package imports
its submodules, which import ``package.sibling``) is no cycle.

The tests: ``tests/library`` tests the library and imports no ``experiments``, ``scripts`` or ``run``;
``tests/studies`` tests ``experiments`` and imports no ``scripts`` or ``run``; ``tests/e2e`` runs the entry
points end to end. No file under ``tests/`` touches ``sys.path`` or loads a module from a file path
(``spec_from_file_location`` and the like): tests/ is a package and pytest puts the root on ``sys.path``.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LIBRARY_LINES = 500

#: top-level names of each floor's own code
FLOORS = {"labelfree": 0, "experiments": 1, "scripts": 2, "run": 2}
#: what each floor may not import (the first component of the imported module's name)
FORBIDDEN = {
    0: {"hydra", "omegaconf", "experiments", "scripts", "run"},
    1: {"scripts", "run"},
    2: set(),
}
#: the modules among which import cycles are looked for
CYCLE_ROOTS = ("labelfree", "experiments")

_LAZY_TARGET = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_LAZY_ROOTS = set(FLOORS) | set().union(*FORBIDDEN.values())


@dataclass(frozen=True)
class Import:
    target: str  # absolute name of the imported module (a package stands for its ``__init__``)
    line: int
    type_checking: bool = False


@dataclass
class ModuleInfo:
    name: str
    path: Path
    imports: list[Import] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- parsing
def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files(root: Path) -> list[Path]:
    files = [p for top in ("labelfree", "experiments", "scripts") for p in sorted((root / top).rglob("*.py"))]
    if (root / "run.py").is_file():
        files.append(root / "run.py")
    return [p for p in files if "__pycache__" not in p.parts]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_relative(module: str | None, level: int, name: str, is_package: bool) -> str:
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join(base + ([module] if module else []))


def _string_arg(call: ast.Call) -> str | None:
    """The module named by the first argument: a string literal, or the literal head of an f-string
    up to its last dot (``f"experiments.studies.{name}"`` -> ``experiments.studies``)."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value).rpartition(".")[0]
        return head or None
    return None


def _is_import_call(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def parse_imports(path: Path, name: str, known: frozenset[str] = frozenset()) -> list[Import]:
    """Every import of the file at ``path`` (module ``name``); ``known``: the project's module names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, type_checking) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(node.module, node.level, name, is_package)
            targets = []  # ``from X import a, b``: X once, each submodule X.a once
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                target = sub if sub in known else base
                if target and target not in targets:
                    targets.append(target)
            found.extend(Import(target, node.lineno, type_checking) for target in targets)
        elif isinstance(node, ast.Call) and _is_import_call(node):
            target = _string_arg(node)
            if target is not None:
                if target.startswith("."):  # import_module(".x", package="a.b")
                    package = next((k.value.value for k in node.keywords if k.arg == "package"
                                    and isinstance(k.value, ast.Constant)), None)
                    level = len(target) - len(target.lstrip("."))
                    target = _resolve_relative(target.lstrip(".") or None, level, f"{package}.x", False) if package else ""
                if target:
                    found.append(Import(target, node.lineno, type_checking))
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(tree, False)
    for statement in tree.body:  # lazy import targets "package.module:function" in module-level constants
        if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
            for node in ast.walk(statement.value):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    match = _LAZY_TARGET.match(node.value.strip())
                    if match and match.group(1).split(".")[0] in _LAZY_ROOTS:
                        found.append(Import(match.group(1), node.lineno))
    return found


def collect(root: Path) -> dict[str, ModuleInfo]:
    """The project's modules under ``root`` with their imports."""
    paths = {module_name(p, root): p for p in project_files(root)}
    known = frozenset(paths)
    return {name: ModuleInfo(name, path, parse_imports(path, name, known)) for name, path in paths.items()}


@functools.lru_cache(maxsize=1)
def _repository() -> dict[str, ModuleInfo]:
    return collect(ROOT)


# ------------------------------------------------------------------------------------------- checks
def floor_of(module: str) -> int | None:
    return FLOORS.get(module.split(".")[0])


def upward_imports(modules: dict[str, ModuleInfo], root: Path) -> list[str]:
    """``file:line: module imports target (floor n may not import ...)`` for every upward import."""
    found = []
    for info in modules.values():
        floor = floor_of(info.name)
        if floor is None:
            continue
        for imp in info.imports:
            if imp.target.split(".")[0] in FORBIDDEN[floor]:
                found.append(
                    f"{info.path.relative_to(root)}:{imp.line}: {info.name} imports {imp.target} "
                    f"(floor {floor} may not import {sorted(FORBIDDEN[floor])})"
                )
    return found


def import_graph(
    modules: dict[str, ModuleInfo], roots: tuple[str, ...] = CYCLE_ROOTS
) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` among the modules whose name starts with one of ``roots``
    (imports under ``TYPE_CHECKING`` left out). A target that is not a module (``package.name`` of a lazy
    target or an attribute) is cut back to the longest module prefix."""
    inside = {name for name in modules if name.split(".")[0] in roots}
    graph: dict[str, dict[str, int]] = {name: {} for name in sorted(inside)}
    for name in inside:
        for imp in modules[name].imports:
            if imp.type_checking:
                continue
            target = imp.target
            while target and target not in inside:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].setdefault(target, imp.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def a_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the first module of ``component``: ``[m0, m1, ..., m0]``."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component  # unreachable for a strongly connected component


def import_cycles(modules: dict[str, ModuleInfo], root: Path, roots: tuple[str, ...] = CYCLE_ROOTS) -> list[str]:
    """One line per import cycle: the modules of the component and one cycle through them, edge by edge."""
    graph = import_graph(modules, roots)
    found = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        edges = ", ".join(
            f"{a} -> {b} ({modules[a].path.relative_to(root)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])
        )
        found.append(f"cycle among {component}: {edges}")
    return found


def long_files(root: Path, limit: int = MAX_LIBRARY_LINES) -> list[str]:
    found = []
    for path in sorted((root / "labelfree").rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(root)}: {lines} lines (at most {limit})")
    return found


# ---------------------------------------------------------------------------------- the repository
def test_floors_import_downward_only():
    upward = upward_imports(_repository(), ROOT)
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_import_cycles_among_the_projects_modules():
    cycles = import_cycles(_repository(), ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_library_files_are_at_most_500_lines():
    offenders = long_files(ROOT)
    assert not offenders, "library files that are too long:\n" + "\n".join(offenders)


def test_the_repository_is_seen():
    modules = _repository()
    assert "labelfree.training" in modules and "labelfree" in modules
    assert any(name.startswith("experiments.") for name in modules)
    assert "run" in modules


# ------------------------------------------------------------------------------- a synthetic tree
def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "labelfree/__init__.py": "",
    # the re-export pattern: the package imports its submodules, a submodule imports a sibling by
    # its absolute name and through the package
    "labelfree/pkg/__init__.py": "from .a import f\nfrom labelfree.pkg.b import g\n",
    "labelfree/pkg/a.py": "from labelfree.pkg.b import g\nimport torch\n",
    "labelfree/pkg/b.py": "import numpy as np\n\ndef g():\n    return 1\n",
    "labelfree/c.py": (
        "from typing import TYPE_CHECKING\nfrom labelfree.pkg import f\n"
        "if TYPE_CHECKING:\n    from labelfree.d import D\n"
    ),
    "labelfree/d.py": "from labelfree import c\nclass D: ...\n",
    "experiments/__init__.py": "",
    "experiments/study.py": "import hydra\nfrom omegaconf import OmegaConf\nfrom labelfree.c import x\n",
    "experiments/other.py": "from . import study\nfrom .study import run\n",
    "scripts/report.py": "import experiments.study\nimport run\nfrom labelfree import c\n",
    "run.py": "import hydra\nfrom experiments.study import run\n",
}


def test_a_clean_synthetic_tree_passes(tmp_path):
    root = _write(tmp_path, CLEAN)
    modules = collect(root)
    assert set(modules) == {
        "labelfree", "labelfree.pkg", "labelfree.pkg.a", "labelfree.pkg.b", "labelfree.c", "labelfree.d",
        "experiments", "experiments.study", "experiments.other", "scripts.report", "run",
    }
    assert upward_imports(modules, root) == []
    assert import_cycles(modules, root) == []
    graph = import_graph(modules)
    assert graph["labelfree.pkg"] == {"labelfree.pkg.a": 1, "labelfree.pkg.b": 2}
    assert graph["labelfree.d"] == {"labelfree.c": 1}  # ``from labelfree import c``: the module c
    assert graph["experiments.other"] == {"experiments.study": 1}
    assert "labelfree.d" not in graph["labelfree.c"]  # TYPE_CHECKING: no edge
    assert long_files(root) == []


def test_upward_imports_are_reported_with_file_and_line(tmp_path):
    root = _write(tmp_path, {
        **CLEAN,
        "labelfree/bad.py": (
            "import os\nfrom omegaconf import DictConfig\n\n"
            "def load():\n    import importlib\n    return importlib.import_module('experiments.study')\n"
            "STUDIES = {'study': 'experiments.study:run', 'other': 'not a target', 'x': 'labelfree.c:f'}\n"
            "def later(name):\n    __import__('hydra.core')\n    return importlib.import_module(f'scripts.x.{name}')\n"
        ),
        "labelfree/pkg/deep.py": "from ...scripts import report\n",
        "experiments/bad.py": "from scripts.report import main\n",
    })
    found = upward_imports(collect(root), root)
    assert sorted(line.split(" (floor")[0] for line in found) == sorted([
        "experiments/bad.py:1: experiments.bad imports scripts.report",
        "labelfree/bad.py:2: labelfree.bad imports omegaconf",
        "labelfree/bad.py:6: labelfree.bad imports experiments.study",
        "labelfree/bad.py:7: labelfree.bad imports experiments.study",
        "labelfree/bad.py:9: labelfree.bad imports hydra.core",
        "labelfree/bad.py:10: labelfree.bad imports scripts.x",
        "labelfree/pkg/deep.py:1: labelfree.pkg.deep imports scripts.report",
    ])


def test_import_cycles_are_found_and_shown(tmp_path):
    root = _write(tmp_path, {
        **CLEAN,
        # a three-module cycle through a relative import and a function-level import
        "labelfree/x.py": "from labelfree.y import f\n",
        "labelfree/y.py": "from . import z\n",
        "labelfree/z.py": "def h():\n    from labelfree.x import g\n",
        # a two-module cycle across floors, one side a lazy import target
        "experiments/cyc.py": "from labelfree.w import k\n",
        "labelfree/w.py": "RUNNERS = {'a': 'experiments.cyc:main'}\n",
    })
    modules = collect(root)
    graph = import_graph(modules)
    assert strongly_connected(graph) == [
        ["experiments.cyc", "labelfree.w"],
        ["labelfree.x", "labelfree.y", "labelfree.z"],
    ]
    cycles = import_cycles(modules, root)
    assert cycles[1] == (
        "cycle among ['labelfree.x', 'labelfree.y', 'labelfree.z']: "
        "labelfree.x -> labelfree.y (labelfree/x.py:1), labelfree.y -> labelfree.z (labelfree/y.py:1), "
        "labelfree.z -> labelfree.x (labelfree/z.py:2)"
    )
    assert cycles[0].startswith("cycle among ['experiments.cyc', 'labelfree.w']: experiments.cyc -> labelfree.w")


def test_strongly_connected_components_of_a_graph():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1, "d": 1}, "f": {"g": 1}, "g": {"f": 1}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["f", "g"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert a_cycle(graph, ["f", "g"]) == ["f", "g", "f"]


def test_long_library_files_are_reported(tmp_path):
    root = _write(tmp_path, {"labelfree/__init__.py": "", "labelfree/big.py": "x = 1\n" * 501,
                             "labelfree/ok.py": "x = 1\n" * 500, "experiments/big.py": "x = 1\n" * 900})
    assert long_files(root) == ["labelfree/big.py: 501 lines (at most 500)"]


# -------------------------------------------------------------------------------------------- the tests
#: the tests' folders and what their modules may not import (the floor they test and the ones above it)
TEST_FLOORS = {"library": {"experiments", "scripts", "run"}, "studies": {"scripts", "run"}, "e2e": set()}
#: calls that load a module from a file path instead of importing it by name
_FILE_LOADERS = {"spec_from_file_location", "SourceFileLoader", "SourcelessFileLoader", "load_source", "run_path"}


def path_hacks(path: Path) -> list[str]:
    """``line: what`` for every use of ``sys.path`` and every load of a module from a file path in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if (node.module == "sys" and "path" in names) or _FILE_LOADERS & set(names):
                found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys" \
                and node.attr == "path":
            found.append(f"{node.lineno}: sys.path")
        elif isinstance(node, (ast.Attribute, ast.Name)):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            if name in _FILE_LOADERS:
                found.append(f"{node.lineno}: {name}")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def python_files_of_the_tests(root: Path) -> list[Path]:
    """Every Python file under ``root/tests`` (test modules, conftest, fixtures, reference scripts)."""
    return [p for p in sorted((root / "tests").rglob("*.py")) if "__pycache__" not in p.parts]


def test_no_test_module_touches_sys_path_or_loads_a_module_from_a_file():
    """Tests import by name: the root is on sys.path through pytest's ``pythonpath``, and tests/ is a package."""
    offenders = [f"{p.relative_to(ROOT)}:{hit}" for p in python_files_of_the_tests(ROOT) for hit in path_hacks(p)]
    assert not offenders, "path hacks in the tests (import by name instead):\n" + "\n".join(offenders)


def misplaced_tests(root: Path) -> list[str]:
    """Test modules outside the floors' folders, and imports of a test module from a floor above the one it tests."""
    found = []
    for path in python_files_of_the_tests(root):
        parts = path.relative_to(root / "tests").parts
        if path.name.startswith("test_") and parts != ("test_architecture.py",) and parts[0] not in TEST_FLOORS:
            found.append(f"{path.relative_to(root)}: not in tests/{{{','.join(TEST_FLOORS)}}}/")
        if parts[0] in TEST_FLOORS:
            for imp in parse_imports(path, module_name(path, root)):
                if imp.target.split(".")[0] in TEST_FLOORS[parts[0]]:
                    found.append(f"{path.relative_to(root)}:{imp.line}: tests/{parts[0]} imports {imp.target}")
    return found


def test_tests_mirror_the_floors():
    """Every test module lives in the folder of the floor it tests, and imports nothing from the floors above."""
    offenders = misplaced_tests(ROOT)
    assert not offenders, "tests that do not mirror the floors:\n" + "\n".join(offenders)


def test_misplaced_tests_are_found(tmp_path):
    root = _write(tmp_path, {
        "tests/__init__.py": "", "tests/conftest.py": "import os\n", "tests/test_architecture.py": "",
        "tests/test_loose.py": "", "tests/fixtures/mnist.py": "",
        "tests/library/test_a.py": "import torch\nfrom tests.fixtures.mnist import w\nfrom experiments.runner import run\n",
        "tests/studies/test_b.py": "import experiments.runner\nimport hydra\n\ndef f():\n    from scripts import bench\n",
        "tests/e2e/test_c.py": "import scripts.bench\nimport run\n",
    })
    assert misplaced_tests(root) == [
        "tests/library/test_a.py:3: tests/library imports experiments.runner",
        "tests/studies/test_b.py:5: tests/studies imports scripts",
        "tests/test_loose.py: not in tests/{library,studies,e2e}/",
    ]


def test_path_hacks_are_found(tmp_path):
    path = tmp_path / "test_x.py"
    path.write_text(
        "import sys\nimport importlib.util\nfrom importlib.machinery import SourceFileLoader\n"
        "sys.path.insert(0, 'x')\n"
        "spec = importlib.util.spec_from_file_location('m', 'scripts/m.py')\n"
        "text = 'sys.path and spec_from_file_location in a string are fine'\n"
    )
    assert path_hacks(path) == ["3: from importlib.machinery import SourceFileLoader", "4: sys.path",
                                "5: spec_from_file_location"]
