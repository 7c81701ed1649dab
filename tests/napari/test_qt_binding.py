"""napari runs on PyQt6 (its PyQt5 support is deprecated), and pytest-qt drives the same binding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.napari


def test_napari_and_pytest_qt_share_pyqt6(make_napari_viewer, request):
    import qtpy
    from napari._qt import qt_main_window
    from pytestqt.qt_compat import qt_api

    make_napari_viewer()
    assert qtpy.API_NAME == "PyQt6"
    assert qt_api.pytest_qt_api == "pyqt6"
    assert "PyQt5" not in sys.modules  # one binding in the process
    assert qt_main_window.SHOW_QT_WARNING is False  # napari's "PyQt5 backend is deprecated" notice is off


def test_launch_uses_pyqt6_like_the_run_script(tmp_path):
    """scripts/run.sh exports QT_API=pyqt6: the launch then builds its viewer on PyQt6."""
    code = ("from napari_dglandmark.launch import open_viewer; import qtpy, sys; v = open_viewer(show=False); "
            "print(qtpy.API_NAME, 'PyQt5' in sys.modules, len(v.layers)); v.close()")
    env = {**os.environ, "QT_API": "pyqt6", "NAPARI_CONFIG": str(tmp_path / "napari.yaml")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    api, pyqt5_loaded, layers = proc.stdout.split()[-3:]
    assert (api, pyqt5_loaded) == ("PyQt6", "False") and int(layers) >= 1, proc.stdout
