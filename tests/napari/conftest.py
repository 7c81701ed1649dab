"""Fixtures for the napari tests: the bundled sample and an artifacts folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_dglandmark._sample_data import SAMPLE_LANDMARKS, SAMPLE_VOLUME

PLUGIN = "napari-dglandmark"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def docs_dir(artifacts) -> Path:
    """Where the README's screenshots go: docs/ with DGLANDMARK_UPDATE_DOCS=1, else the artifacts folder."""
    if os.environ.get("DGLANDMARK_UPDATE_DOCS") == "1":
        return DOCS
    return artifacts


@pytest.fixture
def sample_viewer(make_napari_viewer):
    """A viewer with the sample volume and its landmarks opened through our reader."""
    viewer = make_napari_viewer()
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)
    viewer.open(str(SAMPLE_LANDMARKS), plugin=PLUGIN)
    return viewer


@pytest.fixture(autouse=True)
def _no_dialogs(tmp_path, monkeypatch):
    """Sidecars and the working folder are temporary; questions and file dialogs never block (answer No / the default / cancel)."""
    from napari_dglandmark import _widgets, session
    from napari_dglandmark._widgets import correction, detect

    monkeypatch.setenv(session.SIDECAR_DIR_ENV, str(tmp_path / "sidecars"))
    monkeypatch.setenv(_widgets.WORK_DIR_ENV, str(tmp_path / "work"))
    monkeypatch.setattr(_widgets, "_last_folder", {})
    asked: list[str] = []

    def no(question: str, title: str = "") -> bool:
        asked.append(question)
        return False

    def default(question: str, options: tuple[str, ...], default: str, title: str = "") -> str:
        asked.append(question)
        return default

    monkeypatch.setattr(correction, "ask", no)
    monkeypatch.setattr(correction, "choose", default)
    monkeypatch.setattr(correction, "ask_save_path", lambda caption, start="": None)
    monkeypatch.setattr(detect, "browse_checkpoint", lambda: None)
    return asked


def dock(viewer, kind):
    """The docked widget of class ``kind``."""
    return next(w for w in viewer.window.dock_widgets.values() if isinstance(w, kind))


@pytest.fixture
def launched(make_napari_viewer, qtbot):
    """The README's launch: sample + docks at 1600x1000, shown (geometry needs a real window)."""
    from napari_dglandmark.launch import setup_viewer

    viewer = setup_viewer(make_napari_viewer(show=True))
    qtbot.waitExposed(viewer.window._qt_window)
    qtbot.wait(200)
    return viewer


def selected_in_3d(viewer, qtbot, name: str):
    """(the sample's landmark layer, the landmark table) with ``name`` selected there, shown in 3D."""
    from napari_dglandmark._widgets.table import LandmarkTableWidget

    layer = viewer.layers[1]
    table = LandmarkTableWidget(viewer)
    qtbot.addWidget(table)
    table.select_landmark(name)
    viewer.dims.ndisplay = 3
    return layer, table


def autosave_sample_correction(model: str = "tiny"):
    """An autosave (sidecar) of the sample's landmarks for ``model`` with PC corrected by (1, 2, 3) mm;
    returns the sample's landmarks as detected (before the correction)."""
    from napari_dglandmark import session
    from napari_dglandmark.io import read_landmarks

    lms = read_landmarks(SAMPLE_LANDMARKS)
    lms.image = str(SAMPLE_VOLUME)
    saved = session.CorrectionSession(lms, model=model, protocol="afids32")
    moved = lms.copy()
    moved.positions[moved.index_of("PC")] += [1.0, 2.0, 3.0]
    saved.edit(moved)
    session.save_sidecar(saved)
    return lms
