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
    """Sidecars go to a temporary folder; questions and file dialogs never block (answer No / cancel)."""
    from napari_dglandmark import session
    from napari_dglandmark._widgets import correction, detect

    monkeypatch.setenv(session.SIDECAR_DIR_ENV, str(tmp_path / "sidecars"))
    asked: list[str] = []

    def no(question: str, title: str = "") -> bool:
        asked.append(question)
        return False

    monkeypatch.setattr(correction, "ask", no)
    monkeypatch.setattr(correction, "ask_save_path", lambda caption, start="": None)
    monkeypatch.setattr(detect, "browse_checkpoint", lambda: None)
    return asked
