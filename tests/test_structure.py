"""Facts about the code's structure that a reviewer can check: the module import graph has no cycles (imports
inside functions included, since a lazy import that closes a circle still ties two modules into one unit),
every implicit model holds a :class:`fpntools.SolveConfig`, and the applications define no training loop of their own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in ("fpntools", "problems") for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of this repository that ``path`` imports anywhere (top level or inside functions).

    ``from pkg import x`` counts as an import of ``pkg.x`` when that is a module, else of ``pkg``. Imports of a
    package's own ``__init__`` by its submodules (``from fpntools.x import ...`` resolves through ``fpntools``)
    are not edges: only the named module is.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No two modules import each other, directly or through others (package ``__init__`` re-exports aside:
    an ``__init__`` importing its own submodules, which import siblings by full name, is not a circle)."""
    graph = _graph()
    # a package's __init__ re-exporting its submodules is the package's public face, not a dependency circle
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and _modules()[t].name == "__init__.py")}
    assert _cycles(graph) == []


def test_library_never_imports_applications():
    graph = _graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("fpntools") for t in ts
                 if t.startswith("problems"))
    assert bad == []


@pytest.mark.parametrize("needle", ["anderson_m:", "eval_tol:", "backward_max_iter:"])
def test_applications_do_not_redeclare_solver_settings(needle):
    """Solver, tolerances, Anderson memory and the train/eval switch live in SolveConfig only."""
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "problems").rglob("*.py"))
                 if any(line.strip().startswith(needle) for line in p.read_text().splitlines())]
    assert offenders == []


def test_applications_have_no_training_loop_of_their_own():
    """Optimiser steps on model parameters happen in fpntools.training.Trainer only: no application module calls
    ``clip_grad_norm_`` or steps a learning-rate scheduler (the marks of a hand-written training loop)."""
    offenders = []
    for p in sorted((ROOT / "problems").rglob("*.py")):
        text = p.read_text()
        if "clip_grad_norm_" in text or "lr_scheduler" in text or "sched.step()" in text:
            offenders.append(str(p.relative_to(ROOT)))
    assert offenders == []
