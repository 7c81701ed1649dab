"""Real scans in a real viewer: oblique and sagittal scans drawn true, .mgz, DICOM series choice (issue 20)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_dglandmark import _reader
from napari_dglandmark._widgets.planes import set_plane
from napari_dglandmark.io import read_volume, write_volume
from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.layers import lps_to_world, volume_from_image_layer, world_to_lps

from .conftest import PLUGIN, dock

pytestmark = pytest.mark.napari
STROKE = "real-unlabelled/stroke_T1.nii.gz"
SAGITTAL_DICOM = "real-dicom/siemens_t1_sagittal_supine/3_t1_fl2d_sag"
MULTI_ECHO = "real-dicom/philips_fieldmap_multiecho_classic"


def shown_value(viewer, layer, world: np.ndarray, plane: str) -> float:
    """The intensity napari draws at ``world`` in ``plane``: from the layer's current 2D slice, as rendered."""
    set_plane(viewer, plane, world)
    raw = np.asarray(layer._slice.image.raw)
    assert raw.ndim == 2
    data = np.asarray(layer.world_to_data(world), dtype=float)
    rows, cols = viewer.dims.displayed
    r, c = int(np.floor(data[rows] + 0.5)), int(np.floor(data[cols] + 0.5))
    assert 0 <= r < raw.shape[0] and 0 <= c < raw.shape[1], (r, c, raw.shape)
    return float(raw[r, c])


def _no_rotation(layer) -> None:
    linear = layer.affine.affine_matrix[:3, :3]
    np.testing.assert_allclose(linear, np.diag(np.diag(linear)), atol=1e-12)
    np.testing.assert_allclose(np.abs(layer.affine.rotate), np.eye(3), atol=1e-12)


def test_stroke_t1_drawn_true_no_rotation_and_sitk_intensities(make_napari_viewer, shared_data, artifacts):
    """The no-eye check: no rotation in the drawn layer's affine; napari's pixels = SimpleITK's at 20 head points."""
    path = shared_data / STROKE
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    layer = viewer.layers[-1]
    _no_rotation(layer)
    assert layer.metadata["display"]["how"] == "resampled"
    assert "resampled" in layer.metadata["display"]["note"]
    assert layer.metadata["display"]["obliquity_degrees"] > 15  # the scan really is oblique
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(image)
    rng = np.random.default_rng(20)
    # 20 physical points well inside the head (tissue voxels, half a voxel jitter), axial/coronal/sagittal in turn
    kji = np.argwhere(arr > np.percentile(arr[arr > 0], 30))
    picks = kji[rng.choice(len(kji), 20, replace=False)][:, ::-1] + rng.uniform(-0.3, 0.3, (20, 3))
    errors = []
    for n, ijk in enumerate(picks):
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))
        expected = image.EvaluateAtPhysicalPoint(lps.tolist(), sitk.sitkLinear)
        got = shown_value(viewer, layer, lps_to_world(lps), ("axial", "coronal", "sagittal")[n % 3])
        errors.append(abs(got - expected))
    value_range = float(arr.max() - arr.min())
    measured = {"points": len(errors), "median_abs_error": float(np.median(errors)),
                "max_abs_error": float(np.max(errors)), "intensity_range": value_range,
                "median_error_percent_of_range": float(100 * np.median(errors) / value_range),
                "obliquity_degrees": float(layer.metadata["display"]["obliquity_degrees"]),
                "affine_linear": layer.affine.affine_matrix[:3, :3].round(6).tolist()}
    (artifacts / "no_eye_check_stroke_T1.json").write_text(json.dumps(measured, indent=1))
    assert np.median(errors) <= 0.05 * value_range, measured
    # detection gets the original voxels and geometry, not the display copy
    volume = volume_from_image_layer(layer.data, layer.metadata, layer.affine.affine_matrix)
    original = read_volume(path)
    assert volume.array.shape == original.array.shape and np.array_equal(volume.array, original.array)
    np.testing.assert_allclose(volume.geometry.direction, original.geometry.direction)


def _balls_volume(tmp_path, degrees: float = 20.0):
    """A 20-degree oblique volume with bright balls at known LPS points (and the points)."""
    a = np.radians(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) @ \
        np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    shape = (40, 48, 44)
    geometry = Geometry(shape, (2.0, 2.0, 2.0), (-40.0, -50.0, -30.0), rot)
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    lps = geometry.index_to_physical(kji[:, ::-1].astype(float)).reshape(*shape, 3)
    centre = geometry.index_to_physical(np.array(geometry.size, float) / 2)
    balls = centre + np.array([[0, 0, 0], [22, 10, -12], [-18, -16, 14], [8, -20, -16], [-12, 18, 18]], float)
    arr = np.zeros(shape, np.float32) + 10
    for b in balls:
        arr[np.linalg.norm(lps - b, axis=-1) <= 4.5] = 1000
    path = tmp_path / "oblique_balls.nii.gz"
    write_volume(Volume(arr, geometry, None), path)
    return path, balls


def test_oblique_balls_on_their_landmarks_in_every_plane(make_napari_viewer, tmp_path):
    """Each known ball centre, shown in axial, coronal and sagittal slices through it, is drawn bright."""
    path, balls = _balls_volume(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    layer = viewer.layers[-1]
    _no_rotation(layer)
    for ball in balls:
        for plane in ("axial", "coronal", "sagittal"):
            assert shown_value(viewer, layer, lps_to_world(ball), plane) > 500, (ball, plane)
    # and a point 10 mm beside a ball is background: the check can fail
    assert shown_value(viewer, layer, lps_to_world(balls[0] + [10, 0, 0]), "axial") < 500


def test_sagittal_dicom_opens_and_draws(make_napari_viewer, shared_data, qtbot):
    """The Siemens sagittal series (axes permuted) opens without a singular matrix and draws its voxels."""
    folder = shared_data / SAGITTAL_DICOM
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin=PLUGIN)
    layer = viewer.layers[-1]
    _no_rotation(layer)
    assert layer.metadata["display"]["how"] == "reoriented"
    original = read_volume(folder)
    rng = np.random.default_rng(3)
    idx = np.array([rng.integers(0, n, 12) for n in original.geometry.size]).T
    for n, ijk in enumerate(idx):
        world = lps_to_world(original.index_to_physical(ijk.astype(float)))
        expected = float(original.array[ijk[2], ijk[1], ijk[0]])
        assert shown_value(viewer, layer, world, ("axial", "coronal", "sagittal")[n % 3]) == expected
    viewer.dims.ndisplay = 3
    viewer.dims.ndisplay = 2
    qtbot.wait(50)
    viewer.layers.remove(layer)  # no KeyError on removal/close


def test_mgz_opens_in_napari(make_napari_viewer, shared_data):
    path = shared_data / "real-unlabelled" / "freesurfer_norm.mgz"
    assert _reader.napari_get_reader(str(path)) is not None
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    layer = viewer.layers[-1]
    _no_rotation(layer)
    original = read_volume(path)
    ijk = np.array([128, 120, 140])
    world = lps_to_world(original.index_to_physical(ijk.astype(float)))
    assert shown_value(viewer, layer, world, "coronal") == float(original.array[ijk[2], ijk[1], ijk[0]])


def test_multi_echo_dicom_offers_a_series_choice(make_napari_viewer, shared_data, monkeypatch):
    folder = shared_data / MULTI_ECHO
    offered: list = []

    def pick_third(path, choices):
        offered.extend(choices)
        return choices[2][0]

    monkeypatch.setattr(_reader, "ask_series", pick_third)
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin=PLUGIN)
    assert len(offered) == 4 and all("80x80x53" in text for _, text in offered)
    layer = viewer.layers[-1]
    expected = read_volume(folder, offered[2][0])
    volume = volume_from_image_layer(layer.data, layer.metadata, layer.affine.affine_matrix)
    assert np.array_equal(volume.array, expected.array)
    assert layer.metadata["series"] == offered[2][0]
    assert "echo 2" in layer.name


def test_multi_echo_dicom_cancelled_says_so(make_napari_viewer, shared_data, monkeypatch):
    from napari_dglandmark.errors import DGLandmarkError

    monkeypatch.setattr(_reader, "ask_series", lambda path, choices: None)
    with pytest.raises(DGLandmarkError, match="4 3D volumes and none was chosen"):
        _reader.read_volume_layer(str(shared_data / MULTI_ECHO))


# -- the README's screenshots, each with the check that makes it worth showing ----------------------------
def test_stroke_t1_three_planes_with_ac_on_the_anatomy(launched, qtbot, shared_data, docs_dir):
    """The oblique stroke scan, detected with the bundled model: AC sits on brain tissue in all three planes
    (napari draws there what SimpleITK reads there), shown axial + coronal + sagittal."""
    from napari_dglandmark._widgets.detect import DetectWidget
    from napari_dglandmark._widgets.table import LandmarkTableWidget

    path = shared_data / STROKE
    viewer = launched
    viewer.open(str(path), plugin=PLUGIN)
    qtbot.waitUntil(lambda: "afids_t1w" not in viewer.layers, timeout=5000)  # the sample retires
    image = viewer.layers["stroke_T1"]
    detect = dock(viewer, DetectWidget)
    with qtbot.waitSignal(detect.finished, timeout=600_000) as blocker:
        detect.detect()
    layer = blocker.args[0]
    assert layer is not None, detect.status.text()
    ac = layer.data[list(layer.features["landmark"]).index("AC")]
    sitk_image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(sitk_image)
    tissue = float(np.percentile(arr[arr > 0], 25))  # brain-extracted: the lower quartile of the brain
    value_range = float(arr.max() - arr.min())
    expected = sitk_image.EvaluateAtPhysicalPoint([float(v) for v in world_to_lps(ac)], sitk.sitkLinear)
    assert expected > tissue, (expected, tissue)  # the model put AC in the brain
    for plane in ("axial", "coronal", "sagittal"):
        shown = shown_value(viewer, image, ac, plane)
        assert shown > tissue and abs(shown - expected) <= 0.05 * value_range, (plane, shown, expected)
    table = dock(viewer, LandmarkTableWidget)
    table.select_landmark("AC")
    widget = table.show_three_planes()
    qtbot.wait(300)
    for view in widget.views.values():
        np.testing.assert_allclose(view.model.dims.point, ac, atol=1.01)
    layer.selected_data = set()
    qtbot.wait(100)
    viewer.screenshot(str(docs_dir / "napari_stroke_three_planes.png"), canvas_only=False)
    widget.close_views()
    viewer.window.remove_dock_widget(widget)


def test_dicom_series_chooser_in_the_window(launched, qtbot, shared_data, docs_dir):
    """The real dialog over the napari window: four echoes listed, the third chosen and opened."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_dglandmark._widgets.series import SeriesChooser

    folder = shared_data / MULTI_ECHO
    seen: dict = {}

    def answer() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, SeriesChooser):
            QTimer.singleShot(100, answer)
            return
        try:
            seen["rows"] = [dialog.list.item(r).text() for r in range(dialog.list.count())]
            dialog.list.setCurrentRow(2)
            QApplication.processEvents()
            shot = QApplication.primaryScreen().grabWindow(0)
            seen["saved"] = shot.copy(0, 0, 1600, 1000).save(str(docs_dir / "napari_dicom_series_chooser.png"))
            seen["id"] = dialog.ids[2]
        finally:
            dialog.accept()

    QTimer.singleShot(100, answer)
    viewer = launched
    viewer.open(str(folder), plugin=PLUGIN)
    assert len(seen["rows"]) == 4 and seen["saved"]
    layer = next(lay for lay in viewer.layers if "series" in (lay.metadata or {}))
    assert layer.metadata["series"] == seen["id"] and "echo 2" in layer.name
    expected = read_volume(folder, seen["id"])
    volume = volume_from_image_layer(layer.data, layer.metadata, layer.affine.affine_matrix)
    assert np.array_equal(volume.array, expected.array)
