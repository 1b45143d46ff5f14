"""No import cycles inside the ``orderlab`` package.

Every ``import`` / ``from ... import`` of an ``orderlab`` module counts, at module level and inside functions alike:
a lazy import only hides a cycle from the interpreter, not from the design. Rules:

- ``from orderlab.x import y`` is an edge to module ``orderlab.x.y`` when that is a module, else to ``orderlab.x``
  (``y`` is then a name defined in ``orderlab/x.py`` or ``orderlab/x/__init__.py``). So a submodule that takes a
  name from its own package's ``__init__`` depends on that ``__init__``.
- ``import orderlab.x.y`` is an edge to ``orderlab.x.y`` only: the parent packages Python imports on the way are not
  edges (else every module of a package would sit in a cycle with an ``__init__`` that imports it).
- Relative imports are resolved; imports under ``if TYPE_CHECKING:`` never run and are left out; so are imports by a
  string (``importlib.import_module``), which is how registries name their built-ins without importing them.

Modules are found on disk below the installed package's folders; packages mapped elsewhere through ``package-dir``
(``orderlab.schedules``) are found through the import system, from pyproject.toml's package list or when something
imports them.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = "orderlab"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str
    line: int


class ImportGraph:
    def __init__(self, root: str = ROOT) -> None:
        self.root = root
        self.files: dict[str, Path] = {}  # module -> source file
        self.packages: set[str] = set()
        spec = importlib.util.find_spec(root)
        self._add(root, Path(spec.origin), list(spec.submodule_search_locations or []))
        for package in _listed_packages():  # e.g. orderlab.schedules, which lives outside src/orderlab
            if package.startswith(root + "."):
                self.is_module(package)

    # ----------------------------------------------------------------------------------------------- discovery
    def _add(self, name: str, origin: Path, locations: list[str] | None) -> None:
        self.files[name] = origin
        if locations is None:
            return
        self.packages.add(name)
        for loc in locations:
            for info in pkgutil.iter_modules([loc]):
                full = f"{name}.{info.name}"
                if full in self.files:
                    continue
                if info.ispkg:
                    init = Path(loc) / info.name / "__init__.py"
                    if init.is_file():  # a namespace package without __init__ has no code of its own
                        self._add(full, init, [str(Path(loc) / info.name)])
                else:
                    path = Path(loc) / f"{info.name}.py"
                    if path.is_file():
                        self._add(full, path, None)

    def is_module(self, name: str) -> bool:
        """Whether ``name`` is a module or package of the tree (looked up through the import system when it lives
        outside the folders walked so far, e.g. a package mapped through ``package-dir``)."""
        if name in self.files:
            return True
        parent, _, _ = name.rpartition(".")
        if not parent.startswith(self.root) or not self.is_module(parent) or parent not in self.packages:
            return False  # never ask the import system about a name inside a plain module (that would run it)
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return False
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return False
        self._add(name, Path(spec.origin), list(spec.submodule_search_locations)
                  if spec.submodule_search_locations is not None else None)
        return True

    # ----------------------------------------------------------------------------------------------------- edges
    def _targets(self, module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name == self.root or a.name.startswith(self.root + ".")]
        base = node.module or ""
        if node.level:  # relative: from the module's own package (a package's __init__ is its own package)
            package = module if module in self.packages else module.rpartition(".")[0]
            parts = package.split(".")
            if node.level - 1:
                parts = parts[:-(node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        if base != self.root and not base.startswith(self.root + "."):
            return []
        targets = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.append(sub if alias.name != "*" and self.is_module(sub) else base)
        return targets

    def edges(self) -> list[Edge]:
        out, done = [], set()
        while True:  # resolving a target may discover modules of a package mapped elsewhere: walk those too
            todo = sorted(set(self.files) - done)
            if not todo:
                return out
            for module in todo:
                done.add(module)
                path = self.files[module]
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
                for node in _runtime_imports(tree):
                    for target in self._targets(module, node):
                        if target != module and self.is_module(target):
                            out.append(Edge(module, target, str(path), node.lineno))


def _listed_packages() -> list[str]:
    pyproject = REPO / "pyproject.toml"
    if not pyproject.is_file():
        return []
    setuptools = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("setuptools", {})
    packages = setuptools.get("packages", [])
    return [p for p in packages if isinstance(p, str)] + sorted(setuptools.get("package-dir", {}))


def _runtime_imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's SCCs (iterative) with more than one member, each sorted, in a stable order."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        succ.setdefault(e.source, []).append(e.target)
        succ.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(succ):
        if start in index:
            continue
        work = [(start, iter(sorted(set(succ[start]))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(set(succ[nxt])))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def import_cycles(root: str = ROOT) -> list[tuple[list[str], list[Edge]]]:
    """Each import cycle of the package: (the SCC's modules, the import statements between them)."""
    graph = ImportGraph(root)
    edges = graph.edges()
    result = []
    for comp in strongly_connected(sorted(graph.files), edges):
        members = set(comp)
        inner = sorted({e for e in edges if e.source in members and e.target in members},
                       key=lambda e: (e.source, e.target, e.path, e.line))
        result.append((comp, inner))
    return result


def describe(cycles: list[tuple[list[str], list[Edge]]]) -> str:
    lines = [f"{len(cycles)} import cycle(s) in {ROOT} (strongly connected modules; lazy imports count):"]
    for i, (comp, inner) in enumerate(cycles, 1):
        lines.append(f"  {i}. {' <-> '.join(comp)}")
        for e in inner:
            try:
                where = Path(e.path).resolve().relative_to(REPO)
            except ValueError:
                where = Path(e.path)
            lines.append(f"       {e.source} -> {e.target}   ({where}:{e.line})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ tests
def test_the_graph_checker_finds_cycles_and_only_cycles(tmp_path, monkeypatch):
    pkg = tmp_path / "cyclepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from cyclepkg.sub import thing\n")
    (pkg / "sub" / "__init__.py").write_text("from .impl import thing\n")
    (pkg / "sub" / "impl.py").write_text("def thing():\n    from cyclepkg import helper  # lazy, still an edge\n")
    (pkg / "helper.py").write_text("import cyclepkg.sub.impl\n")
    (pkg / "leaf.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cyclepkg.alone\n")
    (pkg / "alone.py").write_text("import cyclepkg.leaf\nimport json\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cycles = import_cycles("cyclepkg")
    assert [comp for comp, _ in cycles] == [["cyclepkg.helper", "cyclepkg.sub.impl"]]
    assert {(e.source, e.target) for e in cycles[0][1]} == {("cyclepkg.helper", "cyclepkg.sub.impl"),
                                                            ("cyclepkg.sub.impl", "cyclepkg.helper")}
    assert "cyclepkg.helper <-> cyclepkg.sub.impl" in describe(cycles)


def test_the_package_has_no_import_cycles():
    graph = ImportGraph()
    assert {"orderlab.cli", "orderlab.schedules.raster"} <= set(graph.files), sorted(graph.files)
    cycles = import_cycles()
    assert not cycles, describe(cycles)


def test_only_the_cli_and_commands_import_commands():
    """Library code (search, analysis, train, ...) must not reach up into the subcommands."""
    bad = [e for e in ImportGraph().edges()
           if e.target.startswith("orderlab.commands") and not e.source.startswith("orderlab.commands")
           and e.source != "orderlab.cli"]
    assert not bad, "\n".join(f"{e.source} -> {e.target} ({e.path}:{e.line})" for e in bad)
