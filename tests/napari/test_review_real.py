"""Issue 20 in a real window: a new scan comes into view, one question before corrections are touched, a warning
on a detection that is not plausible, and the smaller review defects."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_dglandmark import session as S
from napari_dglandmark._sample_data import SAMPLE_LANDMARKS, SAMPLE_VOLUME
from napari_dglandmark._widgets import correction
from napari_dglandmark._widgets.detect import KEEP, NEW_LAYER, REPLACE, DetectWidget
from napari_dglandmark._widgets.planes import ORIENTATION_NAME
from napari_dglandmark._widgets.table import LandmarkTableWidget
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.io.markups_json import REVIEW_NOTE
from napari_dglandmark.layers import MIN_MARKER_PX, SYMBOL_NORMAL, SYMBOL_REVIEW

from .conftest import PLUGIN, autosave_sample_correction, dock, selected_in_3d
from .test_review import _add_prediction, _idx

pytestmark = pytest.mark.napari
INFO = SimpleNamespace(name="tiny", sha256="abc", protocol="afids32", path="tiny.safetensors")


def _visible_rect(viewer) -> tuple[np.ndarray, np.ndarray]:
    """World (rows, cols) corners of what the main canvas shows."""
    camera = viewer.scene.camera if getattr(viewer, "scene", None) is not None else viewer.camera
    half = np.asarray(viewer.canvas.viewbox_size(viewer.layers), dtype=float) / (2 * camera.zoom)
    centre = np.asarray(camera.center, dtype=float)[-2:]
    return centre - half, centre + half


def _letters_in_view(viewer) -> list[str]:
    letters = viewer.layers[ORIENTATION_NAME]
    lo, hi = _visible_rect(viewer)
    rows, cols = viewer.dims.displayed
    return [str(t) for p, t in zip(letters.data, letters.features["letter"], strict=True)
            if lo[0] <= p[rows] <= hi[0] and lo[1] <= p[cols] <= hi[1]]


def test_launch_shows_all_four_letters(launched):
    assert sorted(_letters_in_view(launched)) == ["A", "L", "P", "R"]


def test_a_scan_outside_the_current_slice_comes_into_view(launched, qtbot, shared_data):
    """The chest CT's height range misses the sample's slice: its middle slice is shown, not a black canvas."""
    launched.open(str(shared_data / "slicerio-ct" / "CTChest4.nrrd"), plugin=PLUGIN)
    qtbot.waitUntil(lambda: "afids_t1w" not in launched.layers, timeout=3000)  # the sample retires
    qtbot.wait(50)
    ct = launched.layers["CTChest4"]
    lo, hi = (np.asarray(e) for e in ct.extent.world)
    z = launched.dims.point[0]
    assert lo[0] <= z <= hi[0] and abs(z - (lo[0] + hi[0]) / 2) < 10
    raw = np.asarray(ct._slice.image.raw)
    assert raw.max() > raw.min()  # the canvas shows tissue
    # the letters no longer hold the slider range at the old slice: Home fits the CT alone
    assert launched.dims.range[0].stop <= hi[0] + 1e-6 and launched.dims.range[0].start >= lo[0] - 1e-6
    assert sorted(_letters_in_view(launched)) == ["A", "L", "P", "R"]


# -- one question before corrections are touched --------------------------------------------------------------
def _corrected_layer(viewer, widget):
    image = viewer.layers["afids_t1w_2mm"]
    volume = read_volume(SAMPLE_VOLUME)
    layer = widget._show_result(read_landmarks(SAMPLE_LANDMARKS), INFO, image, volume)
    data = layer.data.copy()
    pc = list(layer.features["landmark"]).index("PC")
    data[pc] += [0.0, 3.0, 0.0]
    layer.data = data
    assert layer.features["status"][pc] == "corrected"
    return image, volume, layer, data[pc].copy()


@pytest.mark.parametrize("answer", [KEEP, REPLACE, NEW_LAYER])
def test_detect_on_corrected_image_asks_one_clear_choice(make_napari_viewer, qtbot, answer):
    viewer = make_napari_viewer()
    widget = DetectWidget(viewer)
    qtbot.addWidget(widget)
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)
    image, volume, layer, moved = _corrected_layer(viewer, widget)
    questions = []
    widget.choose = lambda q, options, default: questions.append((q, options, default)) or answer
    widget.ask = lambda q: pytest.fail(f"a second question: {q}")
    fresh = read_landmarks(SAMPLE_LANDMARKS)
    fresh.positions += 1.0  # the "new detection" differs everywhere
    result = widget._show_result(fresh, INFO, image, volume)
    assert len(questions) == 1 and questions[0][1] == (KEEP, REPLACE, NEW_LAYER) and questions[0][2] == KEEP
    assert "1 corrected" in questions[0][0]
    pc = list(layer.features["landmark"]).index("PC")
    if answer == KEEP:
        assert result is layer and layer.features["status"][pc] == "corrected"
        np.testing.assert_allclose(layer.data[pc], moved)
        assert "kept your corrections" in widget.status.text() and "detected" not in widget.status.text()
    elif answer == REPLACE:
        assert result is layer and set(layer.features["status"]) == {"defined"}
    else:
        assert result is not layer and result.name.endswith("[2]")
        assert layer.features["status"][pc] == "corrected"  # the corrected layer is untouched
        np.testing.assert_allclose(result.data[list(result.features["landmark"]).index("PC")],
                                   fresh.positions[fresh.index_of("PC")][::-1])
        # each layer autosaves to its own entry: editing the new one never overwrites the corrections
        data = result.data.copy()
        data[0] += [0.0, 0.0, 2.0]
        result.data = data
        correction.existing_corrector(result).save_now()
        correction.existing_corrector(layer).save_now()
        entries = S.read_sidecar(SAMPLE_VOLUME)
        assert set(entries) == {"tiny", "tiny [2]"}
        saved_pc = next(r for r in entries["tiny"]["landmarks"] if r["name"] == "PC")
        assert saved_pc["status"] == "corrected"


def test_autosave_only_corrections_are_offered_not_silently_restored(make_napari_viewer, qtbot, _no_dialogs):
    autosave_sample_correction()
    viewer = make_napari_viewer()
    viewer.add_image(read_volume(SAMPLE_VOLUME).array, name="afids_t1w_2mm", metadata={
        "dglandmark_kind": "volume", "path": str(SAMPLE_VOLUME), "spacing": (2.0, 2.0, 2.0),
        "origin": tuple(read_volume(SAMPLE_VOLUME).origin), "direction": np.diag([-1.0, -1.0, 1.0]).tolist()})
    widget = DetectWidget(viewer)  # docked after the image opened: nobody was asked about the autosave yet
    qtbot.addWidget(widget)
    _no_dialogs.clear()
    layer = widget._show_result(read_landmarks(SAMPLE_LANDMARKS), INFO, viewer.layers["afids_t1w_2mm"],
                                read_volume(SAMPLE_VOLUME))  # the fixture answers the default: keep
    assert len(_no_dialogs) == 1 and "autosave" in _no_dialogs[0]
    assert layer.features["status"][list(layer.features["landmark"]).index("PC")] == "corrected"
    assert "restored your corrections from the autosave" in widget.status.text()


# -- a detection that is not plausible -----------------------------------------------------------------------
def test_implausible_detection_warns_with_a_banner(launched, qtbot, shared_data, monkeypatch):
    """Detect on the real head-and-neck T1 with a detection where the model flagged every landmark (as the
    earlier bundled model did there; stubbed, so a retrained model does not change the test): warning + banner."""
    from napari_dglandmark._widgets import detect as detect_module
    from napari_dglandmark.layers import implausible_detection_warning

    unsure = read_landmarks(SAMPLE_LANDMARKS)
    unsure.status = ["predicted"] * len(unsure)
    unsure.confidence = np.full(len(unsure), 0.03)
    monkeypatch.setattr(detect_module, "_run_detection", lambda *args, **kwargs: ("ok", unsure.copy(), INFO))
    launched.open(str(shared_data / "real-unlabelled" / "T1_head_neck_1.6mm.nii.gz"), plugin=PLUGIN)
    detect = dock(launched, DetectWidget)
    table = dock(launched, LandmarkTableWidget)
    with qtbot.waitSignal(detect.finished, timeout=60_000) as blocker:
        detect.detect()
    layer = blocker.args[0]
    assert layer is not None and layer.metadata["image"].endswith("T1_head_neck_1.6mm.nii.gz")
    assert "flagged every landmark (32 of 32, confidence at most 0.03" in layer.metadata["image_warning"]
    qtbot.waitUntil(lambda: table.layer is layer, timeout=3000)
    assert table.banner.isVisible() and "flagged every landmark" in table.banner.text()
    assert "Warning" in detect.status.text()
    # a detection with confident landmarks gets no such warning
    sure = unsure.copy()
    sure.confidence[:] = 0.9
    assert implausible_detection_warning(sure) == ""


# -- 5: reviewed means reviewed, in every file the viewer exports -----------------------------------------
def test_export_from_the_viewer_clears_the_flags_of_reviewed_landmarks(launched, tmp_path):
    viewer = launched
    viewer.layers.remove(viewer.layers["afids_t1w landmarks"])
    layer = _add_prediction(viewer)  # AC, R superior LMS and culmen flagged
    table = dock(viewer, LandmarkTableWidget)
    table.select_landmark("AC")
    table.corrector.accept()  # Y: verified
    data = layer.data.copy()
    data[_idx(layer, "culmen")] += [0.0, 2.0, 0.0]
    layer.data = data  # dragged: corrected
    table.corrector.ask_save_path = lambda caption, start: str(tmp_path / "case.csv")
    table.corrector.ask = lambda question: True  # R superior LMS was never looked at: export anyway
    paths = table.export()
    with open(paths[0], newline="") as fh:
        rows = {r["landmark"]: r for r in csv.DictReader(fh)}
    points = {p["label"]: p for p in json.loads(paths[2].read_text())["markups"][0]["controlPoints"]}
    for name, status in (("AC", "verified"), ("culmen", "corrected")):
        assert (rows[name]["status"], rows[name]["needs_review"]) == (status, "0")
        assert not points[name]["selected"] and REVIEW_NOTE not in points[name]["description"]
    # the landmark nobody reviewed stays flagged in both files
    assert (rows["R superior LMS"]["status"], rows["R superior LMS"]["needs_review"]) == ("predicted", "1")
    assert points["R superior LMS"]["selected"] and REVIEW_NOTE in points["R superior LMS"]["description"]


# -- 8: flagged stars as visible as discs in 3D, a readable selected label ---------------------------------
def _coloured_pixels(img: np.ndarray) -> np.ndarray:
    """Pixels that are neither background (dark) nor a white outline: the markers' own colour."""
    rgb = img[..., :3].astype(int)
    return (rgb.max(-1) > 60) & (rgb.min(-1) < 200)


def test_3d_flagged_star_shows_as_much_colour_as_a_disc(make_napari_viewer, qtbot):
    """A flagged star and a confident disc, side by side, rendered in 3D: the star's colour is no longer a speck."""
    from napari_dglandmark.io.landmarks import Landmarks
    from napari_dglandmark.layers import points_layer_data

    lms = Landmarks(["AC", "PC"], np.array([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0]]), confidence=[0.9, 0.1],
                    status=["predicted", "predicted"])
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = points_layer_data(lms, "afids32", name="two")
    kwargs.pop("text")
    layer = viewer.add_points(data, **kwargs)
    assert [str(s) for s in layer.symbol] == [SYMBOL_NORMAL, SYMBOL_REVIEW]
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    qtbot.wait(100)
    img = viewer.screenshot(canvas_only=True, flash=False)
    coloured = _coloured_pixels(img)
    half = img.shape[1] // 2  # AC is at patient left (+x), drawn on the right of the 3D view's default camera
    sides = sorted([coloured[:, :half].sum(), coloured[:, half:].sum()])
    assert sides[0] > 0 and sides[0] >= 0.4 * sides[1], sides


def test_3d_selected_label_contrasts_with_a_bright_rendering(sample_viewer, qtbot):
    from napari_dglandmark._widgets.correction import LABEL_COLOR_3D

    layer, _ = selected_in_3d(sample_viewer, qtbot, "AC")
    colour = np.asarray(layer.text.color.constant if hasattr(layer.text.color, "constant")
                        else layer.text.color, dtype=float)[:3]
    np.testing.assert_allclose(colour, np.asarray(_rgb(LABEL_COLOR_3D)), atol=1e-6)

    def luminance(rgb):
        c = np.where(np.asarray(rgb) <= 0.03928, np.asarray(rgb) / 12.92, ((np.asarray(rgb) + 0.055) / 1.055) ** 2.4)
        return float(c @ [0.2126, 0.7152, 0.0722])

    lum = luminance(colour)
    assert (1.05 / (lum + 0.05)) >= 3.0 and ((lum + 0.05) / 0.05) >= 3.0  # readable on white and on black
    sample_viewer.dims.ndisplay = 2
    assert layer.text.string.format == "{landmark}"


def _rgb(name: str) -> tuple[float, float, float]:
    from qtpy.QtGui import QColor

    c = QColor(name)
    return c.redF(), c.greenF(), c.blueF()


# -- 10: the smaller defects -----------------------------------------------------------------------------
def test_worst_first_n_starts_at_the_top_row(launched):
    viewer = launched
    viewer.layers.remove(viewer.layers["afids_t1w landmarks"])
    _add_prediction(viewer)
    table = dock(viewer, LandmarkTableWidget)
    table.worst_first.setChecked(True)
    top = table.row_names()[:3]
    assert top == ["culmen", "AC", "R superior LMS"]
    table.corrector.next()
    assert table.corrector.current == top[0] and table.selected_name() == top[0]
    table.corrector.next()
    assert table.corrector.current == top[1]
    table.corrector.accept()  # Y on AC: on down the table, not back to the protocol's order
    assert table.corrector.current == "R superior LMS"
    table.worst_first.setChecked(False)
    table.corrector.current = None
    table.corrector.next()
    assert table.corrector.current == "R superior LMS"  # protocol order: the first still pending


def test_review_keys_work_with_the_image_layer_selected(launched, qtbot, monkeypatch):
    import napari.utils.notifications as notifications
    from qtpy.QtCore import Qt

    viewer = launched
    viewer.layers.remove(viewer.layers["afids_t1w landmarks"])
    layer = _add_prediction(viewer)
    table = dock(viewer, LandmarkTableWidget)
    viewer.layers.selection.active = viewer.layers["afids_t1w"]
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key_N)
    assert table.corrector.current == "AC" and viewer.layers.selection.active is layer
    viewer.layers.selection.active = viewer.layers["afids_t1w"]
    qtbot.keyClick(canvas, Qt.Key_Y)
    assert layer.features["status"][_idx(layer, "AC")] == "verified"
    # no landmark layer at all: one hint instead of nothing
    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: shown.append(str(msg)))
    viewer.layers.remove(layer)
    viewer.layers.selection.active = viewer.layers["afids_t1w"]
    qtbot.keyClick(canvas, Qt.Key_N)
    assert shown == [correction.NO_LANDMARKS_HINT]


def test_export_proposes_the_working_folder_then_the_last_one(launched, tmp_path):
    from napari_dglandmark._widgets import WORK_DIR_ENV

    viewer = launched
    table = dock(viewer, LandmarkTableWidget)
    proposed: list[str] = []
    chosen = tmp_path / "elsewhere" / "mine.csv"
    chosen.parent.mkdir()
    table.corrector.ask_save_path = lambda caption, start: proposed.append(start) or str(chosen)
    table.corrector._warned_unvisited = True
    table.export()
    table.export()
    work = Path(os.environ[WORK_DIR_ENV])
    assert Path(proposed[0]).parent == work and work.is_dir()
    assert Path(proposed[0]).parent != SAMPLE_VOLUME.parent  # never the scan's own folder
    assert Path(proposed[1]).parent == chosen.parent


def test_adapt_has_a_time_budget_an_estimate_and_the_working_folder(make_napari_viewer, tiny_model_path, qtbot,
                                                                    tmp_path, monkeypatch):
    from napari_dglandmark._widgets import WORK_DIR_ENV
    from napari_dglandmark._widgets import adapt as adapt_widget
    from tests.training.test_adapt import make_site

    site = make_site(tmp_path / "site", 1, statuses=False)
    viewer = make_napari_viewer()
    adapter = adapt_widget.AdaptWidget(viewer)
    qtbot.addWidget(adapter)
    adapter.base_model = str(tiny_model_path)
    assert "up to 10 min" in adapter.estimate.text()
    adapter.budget.setValue(3)
    assert "up to 3 min" in adapter.estimate.text()
    image = viewer.open(str(site / "scan0.nii.gz"), plugin=PLUGIN)[0]
    truth = read_landmarks(site / "scan0.mrk.json")
    from napari_dglandmark.layers import points_layer_data

    data, kwargs, _ = points_layer_data(truth, "afids32", name="scan0 truth", image=image.metadata["path"])
    viewer.add_points(data, **kwargs)
    ran: list = []
    monkeypatch.setattr(adapt_widget, "_run_adaptation",
                        lambda base, cases, out, options, *rest: ran.append(options) or ("cancelled", None))
    proposed: list[str] = []
    adapter.ask_path = lambda start: proposed.append(start) or str(tmp_path / "new.safetensors")
    with qtbot.waitSignal(adapter.finished, timeout=60_000):
        adapter.adapt_button.click()
    assert ran and ran[0].max_minutes == 3.0
    assert Path(proposed[0]).parent == Path(os.environ[WORK_DIR_ENV]) != site


def test_plain_summary_of_an_adaptation():
    from napari_dglandmark._widgets.adapt import plain_summary

    result = SimpleNamespace(evaluated_on="scan1", before_mm=2.44, after_mm=1.62, seconds=190.0)
    text = plain_summary(result)
    assert "scan1" in text and "1.6 mm" in text and "2.4 mm before" in text and "better" in text
    assert "3.2 min" in text and "held-back" not in text and "steps" not in text
    assert "not better" in plain_summary(SimpleNamespace(evaluated_on="s", before_mm=1.0, after_mm=1.5, seconds=6))


def test_three_plane_markers_are_never_specks(launched, qtbot):
    viewer = launched
    table = dock(viewer, LandmarkTableWidget)
    table.select_landmark("AC")
    widget = table.show_three_planes()
    qtbot.wait(100)
    for view in widget.views.values():
        copy = next(lay for lay in view.model.layers if lay.name == "afids_t1w landmarks")
        assert copy.canvas_size_limits[0] >= MIN_MARKER_PX
    widget.close_views()
    viewer.window.remove_dock_widget(widget)


def test_3d_review_screenshot(launched, qtbot, docs_dir):
    """The review in 3D: flagged stars beside the discs, only the selected landmark labelled, in magenta."""
    from napari_dglandmark._widgets.correction import LABEL_COLOR_3D

    viewer = launched
    viewer.layers.remove(viewer.layers["afids_t1w landmarks"])
    layer = _add_prediction(viewer)
    table = dock(viewer, LandmarkTableWidget)
    table.select_landmark("AC")
    viewer.dims.ndisplay = 3
    viewer.scene.camera.zoom *= 2.0
    viewer.scene.camera.center = tuple(float(v) for v in layer.data[_idx(layer, "AC")])
    qtbot.wait(200)
    assert [v for v in layer.text.string.array if v] == ["AC"]
    assert np.allclose(np.asarray(layer.text.color.constant)[:3], _rgb(LABEL_COLOR_3D))
    star = _idx(layer, "culmen")
    assert str(layer.symbol[star]) == SYMBOL_REVIEW and layer.size[star] > layer.size[_idx(layer, "PC")]
    viewer.screenshot(str(docs_dir / "napari_3d_review.png"), canvas_only=False)
    viewer.dims.ndisplay = 2


def test_three_plane_labels_fit_their_canvas(launched, qtbot):
    """The longest AFIDs name, selected, is centred above its point and fits the small canvas."""
    from qtpy.QtGui import QFont, QFontMetrics

    viewer = launched
    table = dock(viewer, LandmarkTableWidget)
    name = "superior interpeduncular fossa"
    table.select_landmark(name)
    widget = table.show_three_planes()
    qtbot.wait(100)
    for view in widget.views.values():
        copy = next(lay for lay in view.model.layers if lay.name == "afids_t1w landmarks")
        assert [v for v in copy.text.string.array if v] == [name]
        assert str(copy.text.anchor) == "center" and copy.text.translation[0] > 0  # above the point
        font = QFont()
        font.setPointSizeF(copy.text.size)
        width = QFontMetrics(font).horizontalAdvance(name)
        assert width < view.qt_viewer.canvas.native.width(), (width, view.qt_viewer.canvas.native.width())
    widget.close_views()
    viewer.window.remove_dock_widget(widget)


def test_review_key_on_an_unreadable_landmark_layer_is_one_warning(make_napari_viewer, qtbot, monkeypatch):
    import napari.utils.notifications as notifications
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    viewer.open(str(SAMPLE_VOLUME), plugin=PLUGIN)
    viewer.add_points(np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]), features={"landmark": ["AC", ""]},
                      name="half named")
    correction.bind_review_keys(viewer)
    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(str(msg)))
    viewer.layers.selection.active = viewer.layers[0]
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_N)
    assert len(shown) == 1 and "name" in shown[0].lower(), shown
