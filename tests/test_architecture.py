"""The house rules of docs/DEVELOPING.md, checked: the core is Qt-free and never imports `training`;
`training` never imports Qt."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

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
