"""The house's shape: imports point one way, nobody imports another module's private names,
and imports inside functions are there only for start-up time (each says so).

Walks the package's source with :mod:`ast` (no imports executed). ``TYPE_CHECKING`` imports
are for annotations and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "immunoprofile"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _owner(name: str) -> str | None:
    """The package module a dotted import name lives in (``a.b.c`` → ``a.b`` if ``c`` is a
    name in it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skip.update(id(n) for n in ast.walk(inner))
    return skip


def _imports(module: str):
    """(target module, imported name or None, node, at top level) for each import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                keep = len(base) - node.level + (1 if _is_package(module) else 0)
                source = ".".join(base[:keep] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                target = full if full in MODULES else source
                name = None if full in MODULES else alias.name
                yield target, name, node, id(node) in top
        else:
            for alias in node.names:
                yield alias.name, None, node, id(node) in top


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _, _ in _imports(module):
            owner = _owner(target) if target.startswith("immunoprofile") else None
            if owner and owner != module:
                edges[module].add(owner)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    # A package's __init__ re-exports its submodules; the submodules must not import it back.
    cycles = _cycles(_graph())
    assert not cycles, f"import circles: {cycles}"


def test_no_imports_of_private_names() -> None:
    """Private modules may be imported inside their own package (that is what they are
    for), never from outside it; private names (``_x``) never cross a module boundary."""
    found = []
    for module in MODULES:
        for target, name, node, _ in _imports(module):
            if not target.startswith("immunoprofile"):
                continue
            if name is not None and name.startswith("_") and not name.startswith("__"):
                found.append(f"{module}:{node.lineno} imports {target}.{name}")
            parts = target.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    home = ".".join(parts[:i])  # the package the private module belongs to
                    if module != home and not module.startswith(home + "."):
                        found.append(f"{module}:{node.lineno} imports private module {target}")
                    break
    assert not found, "\n".join(found)


def _commented_above(lines: list[str], lineno: int) -> bool:
    """A comment line right above the import, or above the block of imports it is in."""
    i = lineno - 2
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("#"):
            return True
        if not (text.startswith(("from ", "import ")) or text.endswith((",", "("))
                or text == ")" or text == ""):
            return False
        i -= 1
    return False


def test_function_level_imports_say_why() -> None:
    """An import inside a function is for start-up time (or an optional dependency): the
    line, or a comment line right above it, says so."""
    bare = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for _, _, node, at_top in _imports(module):
            if at_top:
                continue
            line = lines[node.lineno - 1]
            end = lines[(node.end_lineno or node.lineno) - 1]
            if "#" not in line and "#" not in end and not _commented_above(lines, node.lineno):
                bare.append(f"{module}:{node.lineno}: {line.strip()}")
    assert not bare, "imports inside functions without a reason:\n" + "\n".join(bare)


def test_the_walker_sees_a_circle(tmp_path: Path) -> None:
    """The walk is not vacuous: two modules importing each other form a component."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(edges) == [["a", "b"]]


def test_batch_never_imports_plotting() -> None:
    """The batch draws through a plotter passed in; it never imports ``pl``."""
    batch = [m for m in MODULES if m.startswith("immunoprofile.batch")]
    for module in batch:
        for target, _, node, _ in _imports(module):
            assert not target.startswith("immunoprofile.pl"), f"{module}:{node.lineno}"
            assert "matplotlib" not in target, f"{module}:{node.lineno}"


def test_only_the_run_names_the_run_files() -> None:
    """File names of the run folder appear in run.py only (the run's layout has one owner).

    ``tables`` documents each table under its file name (bead-array runs are laid out by
    ``run.CytokineRun``)."""
    names = ('"subsets.parquet"', '"run.json"', '"qc.csv"', '"errors.csv"', '"samples.h5ad"',
             '"clusters.parquet"', '"report.html"', '"cluster_plots"', '/ "anndata"',
             '/ "events"', '/ "plots"', '"done.json"', '"cytokines.parquet"',
             '"cba_curves.csv"', '"cba_standards.csv"', '"cba_run.json"')
    found = []
    for module, path in MODULES.items():
        if module in ("immunoprofile.run", "immunoprofile.cli", "immunoprofile.tables") \
                or ".datasets" in module:
            continue
        text = path.read_text()
        found += [f"{module}: {n}" for n in names if n in text]
    assert not found, found
