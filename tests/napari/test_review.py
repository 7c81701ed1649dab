"""Issue 12 in a real napari window: the review queue and each defect of the clinician walkthrough.

The window tests use the launch layout (1600x1000, the plugin's docks added through napari's plugin
machinery, so the widgets see napari's proxy viewer as they do for a user) and save screenshots to
test-artifacts/ (docs/ keeps the ones the README shows).
"""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
from qtpy.QtCore import QRect, Qt

from napari_dglandmark import session as S
from napari_dglandmark._sample_data import SAMPLE_KEY, SAMPLE_LANDMARKS, SAMPLE_VOLUME
from napari_dglandmark._widgets import correction
from napari_dglandmark._widgets.detect import DetectWidget
from napari_dglandmark._widgets.measurements import MeasurementsWidget
from napari_dglandmark._widgets.planes import ORIENTATION_NAME, orientation_labels_for, set_plane
from napari_dglandmark._widgets.table import COLUMNS, MIN_VISIBLE_ROWS, LandmarkTableWidget
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.layers import SYMBOL_NORMAL, SYMBOL_REVIEW, landmark_colors, points_layer_data
from napari_dglandmark.protocols import load_protocol

from .conftest import PLUGIN, autosave_sample_correction, dock, selected_in_3d

pytestmark = pytest.mark.napari
#: three landmarks the "model" is unsure of (AC's protocol colour is red: the old red ring vanished on it)
UNSURE = {"AC": 0.30, "R superior LMS": 0.41, "culmen": 0.12}
PREDICTION = "afids_t1w landmarks (afids32)"


def _prediction():
    """The sample's landmarks as a model prediction: confident except :data:`UNSURE`."""
    lms = read_landmarks(SAMPLE_LANDMARKS)
    lms.status = ["predicted"] * len(lms)
    lms.confidence = np.full(len(lms), 0.9)
    for name, conf in UNSURE.items():
        lms.confidence[lms.index_of(name)] = conf
    lms.model, lms.image = "afids32", str(SAMPLE_VOLUME)
    return lms


def _add_prediction(viewer):
    data, kwargs, _ = points_layer_data(_prediction(), "afids32", name=PREDICTION, model_sha256="f00d")
    return viewer.add_points(data, **kwargs)


def _cells(table: LandmarkTableWidget, name: str) -> dict[str, str]:
    r = table.row_names().index(name)
    return {c: table.table.item(r, k).text() for k, c in enumerate(COLUMNS)}


def _idx(layer, name: str) -> int:
    return list(layer.features["landmark"]).index(name)


def _rows_fully_visible(view) -> int:
    height = view.viewport().height()
    return sum(1 for r in range(view.rowCount())
               if view.rowViewportPosition(r) >= 0 and view.rowViewportPosition(r) + view.rowHeight(r) <= height)


def _global_rect(widget) -> QRect:
    return QRect(widget.mapToGlobal(widget.rect().topLeft()), widget.size())


def _assert_columns_readable(view) -> None:
    """Each column as wide as its contents, all inside the viewport, the viewport inside the window."""
    widths = [view.columnWidth(c) for c in range(view.columnCount())]
    assert all(w >= view.sizeHintForColumn(c) for c, w in enumerate(widths)), widths
    assert sum(widths) <= view.viewport().width() and not view.horizontalScrollBar().isVisible()
    assert _global_rect(view.window()).contains(_global_rect(view.viewport()))


# -- 5: dock geometry -------------------------------------------------------------------------
def test_launch_layout_shows_12_rows_every_column_and_every_measurement(launched, artifacts, docs_dir):
    viewer = launched
    win = viewer.window._qt_window
    assert (win.width(), win.height()) == (1600, 1000)
    table, meas = dock(viewer, LandmarkTableWidget), dock(viewer, MeasurementsWidget)
    view = table.table
    assert view.rowCount() == 32
    visible = _rows_fully_visible(view)
    assert visible >= MIN_VISIBLE_ROWS, visible
    # nothing is drawn over the rows: buttons and help text sit below the table, not on it
    rows = _global_rect(view.viewport())
    for w in (table.accept_button, table.undo_button, table.export_button, table.shortcuts, table.counter,
              table.three_planes_button):
        assert w.isVisible() and not rows.intersects(_global_rect(w)), w
    # every column readable: as wide as its contents, all within the viewport (no sideways scrolling)
    _assert_columns_readable(view)
    assert view.item(0, 0).toolTip()  # long names and descriptions on hover
    # every measurement shown whole
    assert meas.table.rowCount() == 2 and _rows_fully_visible(meas.table) == 2
    assert all(meas.table.columnWidth(c) >= meas.table.sizeHintForColumn(c) for c in range(4))
    # the canvas keeps most of the window
    assert viewer.window._qt_viewer.canvas.native.width() >= 550
    widths = [view.columnWidth(c) for c in range(view.columnCount())]
    print(f"rows visible at 1600x1000: {visible} of 32; columns {widths}; "
          f"canvas {viewer.window._qt_viewer.canvas.native.width()} px wide")
    shot = viewer.screenshot(str(docs_dir / "napari_launch.png"), canvas_only=False)
    assert shot.shape[0] >= 900


# -- 1: closing a corrected layer -------------------------------------------------------------
@pytest.mark.parametrize("how", ["delete key in the layer list", "layer list delete button"])
def test_closing_a_corrected_layer_asks_to_export(launched, qtbot, _no_dialogs, how):
    viewer = launched
    layer = viewer.layers["afids_t1w landmarks"]
    viewer.layers.selection.active = layer
    table = dock(viewer, LandmarkTableWidget)
    assert table.corrector is not None and table.corrector.layer is layer  # the real layer, not a proxy
    data = layer.data.copy()
    data[_idx(layer, "PC")] += [0.0, 2.0, 0.0]
    layer.data = data
    assert layer.features["status"][_idx(layer, "PC")] == "corrected"
    _no_dialogs.clear()
    qt_list = viewer.window._qt_viewer.layers
    if how.startswith("delete key"):
        model = qt_list.model()
        rows = [model.index(r, 0) for r in range(model.rowCount())]
        row = next(i for i in rows if model.data(i, Qt.DisplayRole) == layer.name)
        qt_list.setCurrentIndex(row)  # select it in the Qt layer list, as a click does
        assert viewer.layers.selection.active is layer
        qt_list.setFocus()
        qtbot.keyClick(qt_list, Qt.Key_Delete)
    else:
        viewer.window._qt_viewer.layerButtons.deleteButton.click()
    assert layer not in viewer.layers
    assert sum("not exported" in q for q in _no_dialogs) == 1, _no_dialogs


def test_closing_an_untouched_layer_does_not_ask(launched, _no_dialogs):
    viewer = launched
    layer = viewer.layers["afids_t1w landmarks"]
    _no_dialogs.clear()
    viewer.layers.remove(layer)
    assert not _no_dialogs


# -- 2: the Detect image choice -----------------------------------------------------------------
def test_detect_image_choice_follows_the_newest_image_renames_and_removal(launched, qtbot):
    viewer = launched
    detect = dock(viewer, DetectWidget)
    assert detect.image_layer() is viewer.layers["afids_t1w"]
    # a user's scan (here the same file through the reader, not the sample): it becomes the choice
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)
    scan = viewer.layers["afids_t1w_2mm"]
    assert detect.image_layer() is scan and detect.image_combo.currentText() == "afids_t1w_2mm"
    # ... and the sample leaves (its image and its untouched landmarks)
    qtbot.waitUntil(lambda: "afids_t1w" not in viewer.layers, timeout=3000)
    assert not any((lay.metadata or {}).get(SAMPLE_KEY) for lay in viewer.layers)
    scan.name = "patient 7"
    assert detect.image_combo.currentText() == "patient 7" and detect.image_layer() is scan
    second = viewer.add_image(np.zeros((8, 9, 10), dtype=np.float32), name="second")
    assert detect.image_layer() is second
    viewer.layers.remove(second)
    assert detect.image_layer() is scan and [detect.image_combo.itemText(i)
                                              for i in range(detect.image_combo.count())] == ["patient 7"]
    viewer.layers.remove(scan)
    assert detect.image_layer() is None and "No 3D image" in detect.status.text()


def test_detect_with_no_image_says_so_in_the_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = DetectWidget(viewer)
    qtbot.addWidget(widget)
    assert "No 3D image" in widget.status.text()
    widget.detect_button.click()
    assert "open a scan" in widget.status.text()


# -- 3 and the review queue ---------------------------------------------------------------------
def test_review_marker_is_a_shape_that_no_protocol_colour_hides():
    lms = _prediction()
    data, kwargs, _ = points_layer_data(lms, "afids32")
    names = kwargs["features"]["landmark"]
    symbols = [str(s) for s in kwargs["symbol"]]
    assert {n for n, s in zip(names, symbols, strict=True) if s == SYMBOL_REVIEW} == set(UNSURE)
    assert SYMBOL_REVIEW != SYMBOL_NORMAL
    # AC is red in the protocol; its marker differs from every confident point of any colour by shape
    colours = landmark_colors(names, load_protocol("afids32"))
    assert colours[names.index("AC"), 0] > 0.8 and colours[names.index("AC"), 1] < 0.3
    assert kwargs["metadata"]["needs_review"]["AC"] is True


def test_review_queue(launched, qtbot, docs_dir, _no_dialogs):
    viewer = launched
    viewer.layers.remove(viewer.layers["afids_t1w landmarks"])
    layer = _add_prediction(viewer)
    table = dock(viewer, LandmarkTableWidget)
    assert table.layer is layer
    corrector = table.corrector
    assert table.counter.text() == "0 of 32 verified, 3 need review"
    assert _cells(table, "AC")["Review"] == "check" and _cells(table, "PC")["Review"] == ""
    # worst first: the three flagged ones, lowest confidence first
    table.worst_first.setChecked(True)
    assert table.row_names()[:3] == ["culmen", "AC", "R superior LMS"]
    table.worst_first.setChecked(False)  # N down the worst-first rows: test_review_real
    # N goes to the next landmark that still needs review (from the top: AC, row order of the protocol)
    corrector.next()
    assert corrector.current == "AC" and table.selected_name() == "AC"
    assert layer.selected_data == {_idx(layer, "AC")}
    np.testing.assert_allclose(viewer.dims.point, layer.data[_idx(layer, "AC")], atol=1.01)
    corrector.accept()  # Y: verified, then on to the next one needing review
    assert _cells(table, "AC")["Status"] == "verified" and _cells(table, "AC")["Review"] == "checked"
    assert corrector.current == "R superior LMS"
    assert table.counter.text() == "1 of 32 verified, 2 need review"
    assert str(layer.symbol[_idx(layer, "AC")]) == SYMBOL_NORMAL  # looked at: back to a disc
    assert str(layer.symbol[_idx(layer, "culmen")]) == SYMBOL_REVIEW
    # Export warns once about flagged landmarks never looked at (culmen); R superior LMS was selected
    corrector.ask_save_path = lambda caption, start: None
    _no_dialogs.clear()
    assert corrector.unvisited_pending() == ["culmen"]
    table.export()
    table.export()
    assert sum("never looked at: culmen" in q for q in _no_dialogs) == 1
    # the swatch of each row is the point's colour (a star icon while flagged)
    assert not table.table.item(0, 0).icon().isNull()
    viewer.layers.selection.active = layer
    table.select_landmark("culmen")
    layer.selected_data = set()
    qtbot.wait(100)  # the dock grows to the table's new columns
    _assert_columns_readable(table.table)
    viewer.scene.camera.zoom *= 1.4
    viewer.screenshot(str(docs_dir / "napari_review_queue.png"), canvas_only=False)


# -- 4: a hand-placed landmark ------------------------------------------------------------------
def test_a_hand_placed_landmark_has_no_confidence_and_says_who_placed_it(make_napari_viewer, qtbot, tmp_path,
                                                                        _no_dialogs):
    viewer = make_napari_viewer()
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)
    layer = _add_prediction(viewer)
    table = LandmarkTableWidget(viewer)
    qtbot.addWidget(table)
    name = "R superior LMS"
    where = layer.data[_idx(layer, name)].copy()
    assert _cells(table, name)["Conf."] == "0.41" and _cells(table, name)["By"] == "model"
    layer.selected_data = {_idx(layer, name)}
    layer.remove_selected()
    assert _cells(table, name)["Status"] == "missing"
    table.select_landmark(name)
    layer.selected_data = {_idx(layer, "PC")}  # napari copies a selected point's features into a new one
    layer.add(where + [0.0, 1.0, 0.0])
    cells = _cells(table, name)
    assert cells["Status"] == "added" and cells["Conf."] == "" and cells["By"] == "human", cells
    assert np.isnan(layer.features["confidence"][_idx(layer, name)])
    table.corrector.ask_save_path = lambda caption, start: str(tmp_path / "case.csv")
    table.corrector._warned_unvisited = True  # the once-only export warning is tested above
    paths = table.export()
    with open(paths[0], newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["landmark"] == name)
    assert row["status"] == "added" and row["confidence"] == ""
    assert read_landmarks(paths[2]).status[read_landmarks(paths[2]).index_of(name)] == "added"


# -- 6: 3D labels -------------------------------------------------------------------------------
def test_3d_view_labels_only_the_selected_landmark(sample_viewer, qtbot):
    layer, table = selected_in_3d(sample_viewer, qtbot, "PC")
    labels = list(layer.text.string.array)
    assert [v for v in labels if v] == ["PC"] and len(labels) == 32
    table.select_landmark("AC")
    assert [v for v in layer.text.string.array if v] == ["AC"]
    sample_viewer.dims.ndisplay = 2
    assert layer.text.string.format == "{landmark}"


# -- 7: orientation letters and the three-plane layout ------------------------------------------
def test_orientation_letters_follow_the_plane(sample_viewer, qtbot):
    table = LandmarkTableWidget(sample_viewer)
    qtbot.addWidget(table)
    letters = orientation_labels_for(sample_viewer)
    assert ORIENTATION_NAME in sample_viewer.layers
    assert sample_viewer.layers.selection.active is not sample_viewer.layers[ORIENTATION_NAME]
    assert letters.letters() == ["A", "P", "R", "L"]  # axial: anterior up, patient right on the left
    table.select_landmark("AC")
    table.show_plane("coronal")
    assert letters.letters() == ["S", "I", "R", "L"]
    table.show_plane("sagittal")
    assert letters.letters() == ["S", "I", "A", "P"]
    ac = sample_viewer.layers[1].data[_idx(sample_viewer.layers[1], "AC")]
    np.testing.assert_allclose(sample_viewer.dims.point, ac, atol=1.01)
    # the letters sit inside the image on the current slice (never beside the slice being shown)
    lay = sample_viewer.layers[ORIENTATION_NAME]
    np.testing.assert_allclose(lay.data[:, 2], sample_viewer.dims.point[2])
    sample_viewer.dims.ndisplay = 3
    assert letters.letters() == []
    set_plane(sample_viewer, "axial")
    assert letters.letters() == ["A", "P", "R", "L"]


def test_three_planes_centred_on_the_selected_landmark(launched, qtbot, docs_dir):
    viewer = launched
    table = dock(viewer, LandmarkTableWidget)
    layer = viewer.layers["afids_t1w landmarks"]
    table.select_landmark("PC")
    widget = table.show_three_planes()
    qtbot.wait(200)
    pc = layer.data[_idx(layer, "PC")]
    assert tuple(viewer.dims.order) == (0, 1, 2)
    np.testing.assert_allclose(viewer.dims.point, pc, atol=1.01)
    for plane, expected in (("coronal", ["S", "I", "R", "L"]), ("sagittal", ["S", "I", "A", "P"])):
        view = widget.views[plane]
        np.testing.assert_allclose(view.model.dims.point, viewer.dims.point, atol=1e-6)
        assert view.letters.letters() == expected
        names = [lay.name for lay in view.model.layers]
        assert "afids_t1w" in names and "afids_t1w landmarks" in names
    # following the main viewer: the next landmark moves all three planes
    table.select_landmark("AC")
    ac = layer.data[_idx(layer, "AC")]
    for view in widget.views.values():
        np.testing.assert_allclose(view.model.dims.point, ac, atol=1.01)
    assert table.show_three_planes() is widget  # one click again: the same dock, not another one
    layer.selected_data = set()
    qtbot.wait(100)
    assert viewer.window._qt_viewer.canvas.native.height() >= 450  # the axial canvas stays the big one
    viewer.screenshot(str(docs_dir / "napari_three_planes.png"), canvas_only=False)
    widget.close_views()
    viewer.window.remove_dock_widget(widget)
    qtbot.wait(50)


# -- 8: autosave and the restore question --------------------------------------------------------
def test_autosave_only_after_an_edit_in_the_user_folder(sample_viewer, qtbot, tmp_path):
    layer = sample_viewer.layers[1]
    layer.metadata["image"] = str(SAMPLE_VOLUME)
    table = LandmarkTableWidget(sample_viewer)
    qtbot.addWidget(table)
    corrector = table.corrector
    corrector.replace(S.CorrectionSession(read_landmarks(SAMPLE_LANDMARKS), image=str(SAMPLE_VOLUME), model="m"))
    qtbot.wait(correction.AUTOSAVE_MS + 300)
    side = S.sidecar_path(SAMPLE_VOLUME)
    assert side.parent == tmp_path / "sidecars" and not side.exists()  # a detection alone is not work
    data = layer.data.copy()
    data[_idx(layer, "PC")] += [1.0, 0.0, 0.0]
    layer.data = data
    qtbot.waitUntil(side.exists, timeout=5000)


def test_restore_is_asked_once_per_image_and_model(make_napari_viewer, qtbot, monkeypatch, _no_dialogs):
    lms = autosave_sample_correction()
    # an unedited entry (written by an older version after a bare detection) is never offered
    S.save_sidecar(S.CorrectionSession(lms, model="other", protocol="afids32"))
    viewer = make_napari_viewer()
    widget = DetectWidget(viewer)
    qtbot.addWidget(widget)
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)  # asks about tiny; the fixture answers No
    assert len(_no_dialogs) == 1 and "tiny" in _no_dialogs[0]
    image = viewer.layers["afids_t1w_2mm"]
    volume = read_volume(SAMPLE_VOLUME)
    info = SimpleNamespace(name="tiny", sha256="abc", protocol="afids32", path="tiny.safetensors")
    layer = widget._show_result(read_landmarks(SAMPLE_LANDMARKS), info, image, volume)
    assert len(_no_dialogs) == 1  # Detect does not ask the same question again
    assert layer.features["status"][_idx(layer, "PC")] != "corrected"  # No = start from the detection


# -- 9: small ones -------------------------------------------------------------------------------
def test_measurements_title_names_the_protocol_once(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _add_prediction(viewer)
    widget = MeasurementsWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.title.text() == PREDICTION and widget.title.text().count("(afids32)") == 1


def test_export_dialog_names_the_three_files(sample_viewer, qtbot, tmp_path):
    table = LandmarkTableWidget(sample_viewer)
    qtbot.addWidget(table)
    seen = []
    table.corrector.ask_save_path = lambda caption, start: seen.append((caption, start)) or str(tmp_path / "x.csv")
    paths = table.export()
    assert [p.name for p in paths] == ["x.csv", "x_measurements.csv", "x.mrk.json"]
    caption = seen[0][0]
    assert all(part in caption for part in ("NAME.csv", "NAME_measurements.csv", "NAME.mrk.json"))


def test_image_warning_is_a_persistent_banner(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    lms = _prediction()
    lms.image_warning = "looks like a CT of the chest, not a head MRI: landmarks are unreliable"
    data, kwargs, _ = points_layer_data(lms, "afids32", name=PREDICTION)
    assert kwargs["metadata"]["image_warning"].startswith("looks like a CT")
    layer = viewer.add_points(data, **kwargs)
    table = LandmarkTableWidget(viewer)
    qtbot.addWidget(table)
    table.show()
    assert table.banner.isVisible() and "chest" in table.banner.text()
    data = layer.data.copy()
    data[0] += 1.0
    layer.data = data  # edits do not dismiss it
    assert table.banner.isVisible()


def test_chest_ct_gets_a_persistent_warning_banner(make_napari_viewer, qtbot, shared_data, docs_dir):
    """The bundled model on a chest CT (not what it was made for): the table says so, above the rows."""
    from napari_dglandmark.launch import setup_viewer

    viewer = setup_viewer(make_napari_viewer(show=True))
    qtbot.waitExposed(viewer.window._qt_window)
    viewer.open(str(shared_data / "slicerio-ct" / "CTChest4.nrrd"), plugin=PLUGIN)
    detect, table = dock(viewer, DetectWidget), dock(viewer, LandmarkTableWidget)
    assert detect.image_combo.currentText() == "CTChest4"
    qtbot.waitUntil(lambda: "afids_t1w" not in viewer.layers, timeout=3000)  # the sample left
    with qtbot.waitSignal(detect.finished, timeout=300_000) as blocker:
        detect.detect_button.click()
    qtbot.waitUntil(lambda: detect.worker is None, timeout=60_000)
    layer = blocker.args[0]
    assert layer is not None and table.layer is layer
    qtbot.waitUntil(lambda: viewer.layers[-1].name == ORIENTATION_NAME, timeout=3000)  # letters above the scan
    warning = layer.metadata["image_warning"]
    assert warning and table.banner.isVisible() and warning in table.banner.text()
    table.select_landmark(table.row_names()[0])
    layer.selected_data = set()
    viewer.reset_view()
    qtbot.wait(100)
    viewer.screenshot(str(docs_dir / "napari_chest_ct_warning.png"), canvas_only=False)


def test_file_save_keeps_the_review_flags_and_who_placed_each_landmark(tmp_path):
    from napari_dglandmark._writer import write_points

    data, kwargs, _ = points_layer_data(_prediction(), "afids32", name=PREDICTION)
    out = tmp_path / "saved.csv"
    write_points(str(out), data, kwargs)
    with open(out, newline="") as fh:
        rows = {r["landmark"]: r for r in csv.DictReader(fh)}
    assert rows["AC"]["needs_review"] == "1" and rows["PC"]["needs_review"] == "0"
    assert rows["AC"]["placed_by"] == "model" and rows["AC"]["confidence"] == "0.3"
