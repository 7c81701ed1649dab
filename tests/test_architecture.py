"""The house rules of docs/DEVELOPING.md, checked: the core is Qt-free and never imports `training`;
`training` never imports Qt; no import cycle among the core and training modules."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import napari_dglandmark
import training

NAPARI_LAYER = {"_reader", "_writer", "_sample_data", "_widgets", "launch"}
QT = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "magicgui", "superqt")


def _modules(package) -> list[str]:
    names = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        parts = info.name.split(".")
        if package is napari_dglandmark and (set(parts[1:]) & NAPARI_LAYER):
            continue
        names.append(info.name)
    return names


def _imported_after(modules: list[str]) -> set[str]:
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return set(out.stdout.split())


def test_core_is_qt_free_and_independent_of_training():
    core = _modules(napari_dglandmark)
    assert "napari_dglandmark.model.inference" in core and "napari_dglandmark.cli" in core
    loaded = _imported_after(core)
    assert not loaded & set(QT), loaded & set(QT)
    assert "training" not in loaded


def test_training_is_qt_free():
    loaded = _imported_after(_modules(training))
    assert not loaded & set(QT), loaded & set(QT)


# -- import cycles -------------------------------------------------------------------------------
#: cycles that exist and are being taken apart elsewhere; each entry must still be a cycle (else remove it)
KNOWN_CYCLES: set[frozenset[str]] = set()
ROOT = Path(__file__).resolve().parents[1]


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement: at module level, inside functions (a lazy import still couples two
    modules) and under ``if TYPE_CHECKING:`` (so does a type hint: the issue's model cycle was one)."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def import_graph(root: Path, packages: Sequence[str]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` (under ``root``) it imports."""
    files: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path

    def known(name: str) -> str | None:  # the module a dotted name lives in (longest known prefix)
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in files:
                return ".".join(parts[:n])
        return None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            for target in targets:
                module = known(target)
                if module is not None and module != name:
                    graph[name].add(module)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def check_no_new_cycles(graph: dict[str, set[str]], known: set[frozenset[str]] = KNOWN_CYCLES) -> None:
    """Fail on any import cycle not in ``known``, and on a ``known`` one that is gone (keep the list true)."""
    cycles = import_cycles(graph)
    new = sorted(sorted(c) for c in cycles - known)
    assert not new, f"import cycle(s): {new}; a module must not import (even lazily) what imports it"
    gone = sorted(sorted(c) for c in known - cycles)
    assert not gone, f"no longer a cycle, remove from KNOWN_CYCLES: {gone}"


def test_no_import_cycles_in_the_core_or_training():
    graph = import_graph(ROOT, ["napari_dglandmark", "training"])
    assert {"napari_dglandmark.io.volume", "napari_dglandmark.io.dicom", "training.adapt"} <= set(graph)
    assert "napari_dglandmark.io.geometry" in graph["napari_dglandmark.io.dicom"]  # the graph sees imports
    check_no_new_cycles(graph)


def test_the_cycle_check_fails_on_a_planted_cycle(tmp_path: Path):
    pkg = tmp_path / "planted"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def later():\n    from .a import later  # a lazy import closes the cycle too\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:  # type hints couple modules too\n"
                "    from .d import D\n",
        "d.py": "import planted.c\n",
        "h.py": "import planted.d\nimport os\n",  # imports into a cycle without being part of it
        "sub/__init__.py": "",
        "sub/e.py": "from ..f import g\n",
        "f.py": "from planted.sub import e\ng = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path, ["planted"])
    assert graph["planted.d"] == {"planted.c"} and graph["planted.h"] == {"planted.d"}
    planted = {frozenset({"planted.a", "planted.b"}), frozenset({"planted.c", "planted.d"}),
               frozenset({"planted.sub.e", "planted.f"})}
    assert import_cycles(graph) == planted
    with pytest.raises(AssertionError, match=r"import cycle\(s\).*planted\.a"):
        check_no_new_cycles(graph, set())
    check_no_new_cycles(graph, planted)
    with pytest.raises(AssertionError, match="remove from KNOWN_CYCLES"):
        check_no_new_cycles(graph, planted | {frozenset({"planted.h", "planted.d"})})


def test_the_adapt_widget_counts_reviewed_landmarks_without_training():
    code = ("import sys\n"
            "import numpy as np\n"
            "from napari_dglandmark._widgets.adapt import count_text\n"
            "from napari_dglandmark.io.landmarks import Landmarks\n"
            "lms = Landmarks(['a', 'b'], np.zeros((2, 3)), status=['verified', 'predicted'])\n"
            "print(count_text([(None, None, lms)]), 'training' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["1", "scan,", "1", "landmark", "reviewed", "False"]
