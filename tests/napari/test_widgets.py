"""Dock widgets: landmark table, measurements, detect placeholder; screenshots for a human look."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark._sample_data import SAMPLE_LANDMARKS, SAMPLE_VOLUME
from napari_dglandmark._widgets.measurements import MeasurementsWidget
from napari_dglandmark._widgets.table import COLUMNS, LandmarkTableWidget
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.layers import points_layer_data

pytestmark = pytest.mark.napari


def _index(points, name: str) -> int:
    return list(points.features["landmark"]).index(name)


def test_table_lists_landmarks_in_ras_and_centres_on_selection(sample_viewer, qtbot):
    table = LandmarkTableWidget(sample_viewer)
    qtbot.addWidget(table)
    points = sample_viewer.layers[1]
    assert table.layer is points and table.table.rowCount() == 32
    assert [table.table.horizontalHeaderItem(c).text() for c in range(len(COLUMNS))] == list(COLUMNS)
    truth = read_landmarks(SAMPLE_LANDMARKS)
    pc_ras = truth.positions_in("RAS")[truth.index_of("PC")]
    row = [table.table.item(r, 0).text() for r in range(32)].index("PC")
    ras = [COLUMNS.index(c) for c in ("R (mm)", "A (mm)", "S (mm)")]
    assert [float(table.table.item(row, c).text()) for c in ras] == pytest.approx(pc_ras, abs=0.051)

    assert table.select_landmark("PC")
    world = truth.get("PC")[::-1]
    np.testing.assert_allclose(sample_viewer.dims.point, world, atol=0.51)  # sliders snap to the 1 mm step
    displayed = list(sample_viewer.dims.displayed)
    np.testing.assert_allclose(np.asarray(sample_viewer.camera.center)[-len(displayed):], world[displayed], atol=1e-6)
    assert points.selected_data == {_index(points, "PC")}

    # live: moving a point updates its row
    data = points.data.copy()
    data[_index(points, "PC")] += [0.0, 0.0, -10.0]  # 10 mm to patient right (world x = L)
    points.data = data
    row = [table.table.item(r, 0).text() for r in range(32)].index("PC")
    assert float(table.table.item(row, ras[0]).text()) == pytest.approx(pc_ras[0] + 10.0, abs=0.051)


def test_measurements_update_live_and_show_missing(sample_viewer, qtbot):
    widget = MeasurementsWidget(sample_viewer)
    qtbot.addWidget(widget)
    points = sample_viewer.layers[1]
    truth = read_landmarks(SAMPLE_LANDMARKS)
    acpc = np.linalg.norm(truth.get("AC") - truth.get("PC"))
    assert float(widget.values()["AC-PC"]) == pytest.approx(acpc, abs=0.051)
    data = points.data.copy()
    data[_index(points, "PC")] = data[_index(points, "AC")] + [0.0, 30.0, 0.0]
    points.data = data
    assert float(widget.values()["AC-PC"]) == pytest.approx(30.0, abs=0.051)
    points.selected_data = {_index(points, "AC")}
    points.remove_selected()
    values = widget.values()
    assert values["AC-PC"] == "missing"
    assert values["genu-splenium"] not in ("missing", "0.0")


def test_dock_widgets_from_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("Detect landmarks", "Landmark table", "Measurements"):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-dglandmark", name)
        assert widget is not None


def test_screenshots_of_labelled_slices(sample_viewer, artifacts, qtbot):
    """Axial slice at AC and midline sagittal slab, labels on; saved for a human to look at."""
    image, points = sample_viewer.layers
    # show the low-confidence look too: the same landmarks as a "prediction" with two unsure points
    lms = read_landmarks(SAMPLE_LANDMARKS)
    lms.confidence = np.full(len(lms), 0.9)
    lms.confidence[[lms.index_of("PC"), lms.index_of("genu of CC")]] = [0.3, 0.45]
    sample_viewer.layers.remove(points)
    data, kwargs, _ = points_layer_data(lms, "afids32", name="prediction")
    points = sample_viewer.add_points(data, **kwargs)
    table = LandmarkTableWidget(sample_viewer)
    qtbot.addWidget(table)
    sample_viewer.window.resize(1100, 900)
    sample_viewer.dims.thickness = (3.0, 3.0, 3.0)  # a 3 mm slab of points around the slice
    table.select_landmark("AC")
    points.selected_data = set()
    sample_viewer.reset_view()
    ac_world = np.asarray(points.data[_index(points, "AC")])
    sample_viewer.camera.center = tuple(ac_world[list(sample_viewer.dims.displayed)])
    sample_viewer.camera.zoom *= 1.6
    axial = sample_viewer.screenshot(str(artifacts / "axial_at_AC.png"), canvas_only=False)
    assert axial.shape[0] > 300

    # sagittal through the midline (world x = L = 0): show (S, P) with superior up
    sample_viewer.dims.order = (2, 0, 1)
    sample_viewer.dims.set_point(2, 0.0)
    sample_viewer.camera.orientation2d = ("up", "right")
    sample_viewer.reset_view()
    sample_viewer.camera.zoom *= 1.6
    sag = sample_viewer.screenshot(str(artifacts / "sagittal_midline.png"), canvas_only=False)
    assert sag.shape[0] > 300
    # the voxels under the landmarks are brain, not background
    vol = read_volume(SAMPLE_VOLUME)
    idx = np.round(vol.physical_to_index(lms.positions)).astype(int)
    values = vol.array[idx[:, 2], idx[:, 1], idx[:, 0]]
    assert np.median(values) > np.percentile(vol.array, 50)
