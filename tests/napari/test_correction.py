"""Detect -> correct -> export in a real viewer (tiny untrained model), errors, autosave, the launch job."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_dglandmark import session as S
from napari_dglandmark._reader import read_paths
from napari_dglandmark._sample_data import SAMPLE_LANDMARKS, SAMPLE_VOLUME
from napari_dglandmark._widgets import correction
from napari_dglandmark._widgets.detect import REPLACE, DetectWidget, landmark_layer_name
from napari_dglandmark._widgets.measurements import MeasurementsWidget
from napari_dglandmark._widgets.table import LandmarkTableWidget
from napari_dglandmark.io import read_landmarks
from napari_dglandmark.io.volume import lps_to_ras

from .conftest import PLUGIN

pytestmark = pytest.mark.napari
WAIT_MS = 120_000  # a loaded 2-CPU machine (training runs beside the tests)


@pytest.fixture
def notes(monkeypatch):
    """Every napari notification our code shows, as (kind, message)."""
    import napari.utils.notifications as notifications

    shown: list[tuple[str, str]] = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(notifications, f"show_{kind}", lambda msg, _k=kind: shown.append((_k, str(msg))))
    return shown


def _detect(widget: DetectWidget, qtbot) -> object:
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as blocker:
        widget.detect_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    return blocker.args[0]


def _row(table: LandmarkTableWidget, name: str) -> list[str]:
    for r in range(table.table.rowCount()):
        if table.table.item(r, 0).text() == name:
            return [table.table.item(r, c).text() for c in range(table.table.columnCount())]
    raise KeyError(name)


def _idx(layer, name: str) -> int:
    return list(layer.features["landmark"]).index(name)


def test_detect_correct_export_end_to_end(make_napari_viewer, tiny_model_path, qtbot, tmp_path, artifacts,
                                          notes, _no_dialogs):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "afids_t1w")
    viewer.layers.remove(viewer.layers[1])  # the ground truth; we detect instead
    detect, table, meas = DetectWidget(viewer), LandmarkTableWidget(viewer), MeasurementsWidget(viewer)
    for w, name in ((detect, "Detect landmarks"), (table, "Landmark table"), (meas, "Measurements")):
        viewer.window.add_dock_widget(w, area="right", name=name)
    assert detect.image_combo.currentText() == "afids_t1w"
    assert detect.choose_checkpoint(str(tiny_model_path)) == str(tiny_model_path)

    layer = _detect(detect, qtbot)
    assert layer is not None and layer.name == landmark_layer_name("afids_t1w", "tiny") == "afids_t1w landmarks (tiny)"
    assert len(layer.data) == 32 and set(layer.features["status"]) == {"predicted"}
    conf = np.asarray(layer.features["confidence"], dtype=float)
    assert np.all((conf >= 0) & (conf <= 1))
    assert detect.progress_log and detect.progress_log[-1][0] == detect.progress_log[-1][1]
    assert layer.metadata["model_sha256"] and layer.metadata["geometry"]["shape"] == [97, 115, 97]
    assert table.layer is layer and table.table.rowCount() == 32 and meas.layer is layer
    # landmarks come back with the fixed protocol colour of their name
    assert not np.allclose(layer.face_color[_idx(layer, "AC")], layer.face_color[_idx(layer, "PC")])

    # select PC in the table: the viewer centres on it (all axes) and the point is selected
    assert table.select_landmark("PC")
    pc = _idx(layer, "PC")
    np.testing.assert_allclose(viewer.dims.point, layer.data[pc], atol=1.01)
    assert layer.selected_data == {pc} and table.corrector.current == "PC"

    # move it (what a drag does: a 'changed' data event) -> corrected, measurement follows
    truth = read_landmarks(SAMPLE_LANDMARKS)  # the untrained model is off: correct PC and AC to the truth
    moved = truth.get("PC")[::-1]
    data = layer.data.copy()
    data[pc] = moved
    layer.data = data
    assert layer.features["status"][pc] == "corrected" and _row(table, "PC")[1] == "corrected"
    expected = np.linalg.norm(moved - layer.data[_idx(layer, "AC")])
    assert float(meas.values()["AC-PC"]) == pytest.approx(expected, abs=0.051)

    # add mode while AC is selected: the click moves AC (identity from the table, not from point order)
    table.select_landmark("AC")
    target = truth.get("AC")[::-1]
    layer.add(target)
    assert len(layer.data) == 32 and _idx(layer, "AC") is not None
    np.testing.assert_allclose(layer.data[_idx(layer, "AC")], target)
    assert _row(table, "AC")[1] == "corrected"
    acpc = np.linalg.norm(truth.get("AC") - truth.get("PC"))
    assert float(meas.values()["AC-PC"]) == pytest.approx(acpc, abs=0.051)

    # delete AC -> missing, row kept, measurement missing; placing it again -> added; undo -> back
    layer.selected_data = {_idx(layer, "AC")}
    layer.remove_selected()
    assert table.table.rowCount() == 32 and _row(table, "AC")[1] == "missing"
    assert meas.values()["AC-PC"] == "missing"
    table.select_landmark("AC")  # a missing landmark: a notification, and it becomes the one to place
    assert table.corrector.current == "AC" and any("AC is missing" in m for _, m in notes)
    layer.add(target)
    assert _row(table, "AC")[1] == "added" and len(layer.data) == 32
    table.undo_button.click()
    assert _row(table, "AC")[1] == "missing" and len(layer.data) == 31
    table.undo_button.click()
    assert _row(table, "AC")[1] == "corrected"
    acpc = np.linalg.norm(truth.get("AC") - truth.get("PC"))
    assert float(meas.values()["AC-PC"]) == pytest.approx(acpc, abs=0.051)
    np.testing.assert_allclose(layer.data[_idx(layer, "AC")], target)

    # keys: accept (Y) marks verified and goes to the next landmark; N/B step
    table.select_landmark("R superior LMS")
    table.corrector.accept()
    assert _row(table, "R superior LMS")[1] == "verified" and table.selected_name() == "L superior LMS"
    table.corrector.previous()
    assert table.selected_name() == "R superior LMS"
    for key in "nbyu":
        assert key.upper() in {str(k) for k in layer.keymap} or key in {str(k).lower() for k in layer.keymap}

    # autosave (debounced) beside the image, or here in the test's user folder
    side = S.sidecar_path(SAMPLE_VOLUME)
    qtbot.waitUntil(side.exists, timeout=5000)
    saved = S.load_sidecar(SAMPLE_VOLUME, "tiny")
    assert saved.landmarks.status[saved.landmarks.index_of("PC")] == "corrected"

    # screenshots: window with the docks, a 2D slice at PC with labels, the 3D view
    viewer.window.resize(1400, 1000)
    table.select_landmark("PC")
    layer.selected_data = set()
    viewer.dims.thickness = (3.0, 3.0, 3.0)
    shot = viewer.screenshot(str(artifacts / "corrected_window.png"), canvas_only=False)
    assert shot.shape[0] > 300
    viewer.scene.camera.zoom *= 1.5
    viewer.screenshot(str(artifacts / "corrected_axial_at_PC.png"), canvas_only=True)
    viewer.dims.ndisplay = 3
    table.select_landmark("AC")
    np.testing.assert_allclose(viewer.scene.camera.center, layer.data[_idx(layer, "AC")], atol=1e-6)
    layer.selected_data = set()
    viewer.reset_view()
    viewer.scene.camera.angles = (0.0, -60.0, 120.0)
    viewer.screenshot(str(artifacts / "corrected_3d.png"), canvas_only=True)
    viewer.dims.ndisplay = 2

    # export: landmark CSV (moved PC in RAS mm, corrected), measurements CSV, .mrk.json
    table.corrector.ask_save_path = lambda caption, start: str(tmp_path / "case.csv")
    _no_dialogs.clear()
    if table.corrector.unvisited_pending():  # flagged and never looked at: warned once (answered No)
        assert table.export() == [] and any("never looked at" in q for q in _no_dialogs)
    paths = table.export()
    assert [p.name for p in paths] == ["case.csv", "case_measurements.csv", "case.mrk.json"]
    with open(paths[0], newline="") as fh:
        rows = {r["landmark"]: r for r in csv.DictReader(fh)}
    assert list(next(iter(rows.values()))) == list(S.EXPORT_COLUMNS)
    pc_row = rows["PC"]
    assert pc_row["status"] == "corrected" and pc_row["coordinate_system"] == "RAS"
    np.testing.assert_allclose([float(pc_row[c]) for c in "xyz"], lps_to_ras(moved[::-1]), atol=1e-9)
    assert pc_row["model"] == "tiny" and pc_row["model_sha256"] == layer.metadata["model_sha256"]
    assert pc_row["i"] and pc_row["exported_at"]
    with open(paths[1], newline="") as fh:
        acpc = next(r for r in csv.DictReader(fh) if r["measurement"] == "AC-PC")
    assert acpc["status"] == "corrected" and float(acpc["value_mm"]) > 0
    assert not table.corrector.session.unexported
    # re-reading the CSV with our reader gives the same points
    back_data, back_kwargs, _ = read_paths(str(paths[0]))[0]
    names = list(back_kwargs["features"]["landmark"])
    for name in ("PC", "AC", "R superior LMS"):
        np.testing.assert_allclose(back_data[names.index(name)], layer.data[_idx(layer, name)], atol=1e-9)
    assert back_kwargs["features"]["status"][names.index("PC")] == "corrected"
    assert read_landmarks(paths[2]).status[read_landmarks(paths[2]).index_of("R superior LMS")] == "verified"

    # detecting again asks one question before touching corrections (the fixture keeps them: the default)
    data = layer.data.copy()
    data[_idx(layer, "culmen")] += [0.0, 0.0, 3.0]
    layer.data = data
    _no_dialogs.clear()
    assert _detect(detect, qtbot) is layer
    assert len(_no_dialogs) == 1 and "holds your corrections" in _no_dialogs[0]
    assert _row(table, "culmen")[1] == "corrected"
    assert "kept your corrections" in detect.status.text()
    detect.choose = lambda q, options, default: REPLACE
    _detect(detect, qtbot)
    assert set(layer.features["status"]) == {"predicted"}
    assert [lay.name for lay in viewer.layers if lay.name != "orientation"] == ["afids_t1w", layer.name]

    # closing a layer with unexported corrections asks (napari cannot veto; the sidecar keeps them)
    layer.data = data
    _no_dialogs.clear()
    viewer.layers.remove(layer)
    assert any("not exported" in q for q in _no_dialogs)


def test_errors_are_notifications_and_the_widget_stays_usable(make_napari_viewer, tiny_model_path, tmp_path,
                                                              qtbot, notes):
    viewer = make_napari_viewer()
    widget = DetectWidget(viewer)
    qtbot.addWidget(widget)
    widget.detect_button.click()  # no image layer
    assert notes[-1][0] == "error" and "no 3D image layer" in notes[-1][1]
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)
    assert widget.image_combo.currentText() == "afids_t1w_2mm"
    assert widget.model() is None or widget.model() == "afids32"

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    widget.choose_checkpoint(str(bad))
    _detect(widget, qtbot)
    assert notes[-1][0] == "error" and "bad.safetensors" in notes[-1][1] and "\n" not in notes[-1][1]
    assert widget.detect_button.isEnabled() and not widget.cancel_button.isEnabled()

    widget.choose_checkpoint("notes.txt")
    assert notes[-1][0] == "error" and "safetensors" in notes[-1][1]

    widget.choose_checkpoint(str(tiny_model_path))
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as blocker:
        widget.detect_button.click()
        widget.cancel()
    assert blocker.args == [None] and ("info", "detection cancelled") in notes
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert len(viewer.layers) == 1
    # usable afterwards
    layer = _detect(widget, qtbot)
    assert layer is not None and len(layer.data) == 32


def test_reopening_an_image_offers_its_autosave(make_napari_viewer, qtbot, monkeypatch, _no_dialogs):
    lms = read_landmarks(SAMPLE_LANDMARKS)
    lms.image = str(SAMPLE_VOLUME)
    s = S.CorrectionSession(lms, model="tiny", protocol="afids32")
    moved = lms.copy()
    moved.positions[moved.index_of("PC")] += [1.0, 2.0, 3.0]
    s.edit(moved)
    S.save_sidecar(s)
    viewer = make_napari_viewer()
    widget = DetectWidget(viewer)
    qtbot.addWidget(widget)
    monkeypatch.setattr(correction, "ask", lambda q, title="": _no_dialogs.append(q) or True)
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)
    assert sum("autosaved corrections" in q for q in _no_dialogs) == 1
    layer = viewer.layers["afids_t1w_2mm landmarks (tiny)"]
    i = _idx(layer, "PC")
    assert layer.features["status"][i] == "corrected"
    np.testing.assert_allclose(layer.data[i], moved.get("PC")[::-1])


def test_launch_opens_the_sample_with_docked_widgets(qtbot):
    from napari_dglandmark.launch import open_viewer

    viewer = open_viewer(show=False)
    try:
        docks = viewer.window._dock_widgets
        for name in ("Detect landmarks", "Landmark table", "Measurements"):
            assert any(name in key for key in docks), list(docks)
        assert [lay.name for lay in viewer.layers if lay.name != "orientation"] == ["afids_t1w", "afids_t1w landmarks"]
    finally:
        viewer.close()
