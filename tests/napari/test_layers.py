"""Qt-free: Volume/Landmarks <-> napari layer data (world = LPS reversed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import Geometry, Landmarks, Volume
from napari_dglandmark.layers import (
    BORDER_WIDTH_LOW_CONFIDENCE,
    BORDER_WIDTH_NORMAL,
    geometry_from_napari_affine,
    guess_protocol,
    image_layer_data,
    landmark_table_rows,
    landmarks_from_points,
    lps_to_world,
    measurement_rows,
    napari_affine,
    points_layer_data,
    volume_from_image_layer,
)
from napari_dglandmark.protocols import load_protocol


def _oblique_geometry() -> Geometry:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = rot @ np.diag([-1.0, -1.0, 1.0])
    return Geometry((6, 5, 4), (0.7, 1.1, 2.5), (10.0, -20.0, 30.0), direction)


def test_affine_maps_napari_index_to_world_for_oblique_flipped_grid():
    g = _oblique_geometry()
    affine = napari_affine(g)
    rng = np.random.default_rng(0)
    ijk = rng.uniform(0, 4, size=(10, 3))
    kji_h = np.c_[ijk[:, ::-1], np.ones(10)]
    world = (kji_h @ affine.T)[:, :3]
    np.testing.assert_allclose(world, lps_to_world(g.index_to_physical(ijk)), atol=1e-12)
    back = geometry_from_napari_affine(g.shape, affine)
    np.testing.assert_allclose(back.spacing, g.spacing)
    np.testing.assert_allclose(back.origin, g.origin)
    np.testing.assert_allclose(back.direction, g.direction, atol=1e-12)


def test_image_layer_data_and_back():
    g = _oblique_geometry()
    vol = Volume(np.arange(120, dtype=np.int16).reshape(g.shape), g, "/x/case.nii.gz")
    data, kwargs, kind = image_layer_data(vol)
    # oblique: napari gets an LPS-aligned display copy (no rotation); the original travels in the metadata
    assert kind == "image" and data is not vol.array and kwargs["name"] == "case"
    linear = kwargs["affine"][:3, :3]
    np.testing.assert_allclose(linear, np.diag(np.diag(linear)), atol=1e-12)
    assert kwargs["metadata"]["display"]["how"] == "resampled"
    lo, hi = kwargs["contrast_limits"]
    assert lo < hi
    again = volume_from_image_layer(data, kwargs["metadata"])
    assert again.array is vol.array  # detection runs on the original voxels, not the display copy
    assert again.geometry.spacing == g.spacing and again.path == vol.path
    np.testing.assert_allclose(again.geometry.direction, g.direction, atol=1e-12)
    shown = volume_from_image_layer(data, None, kwargs["affine"])  # a layer without our metadata: its own grid
    np.testing.assert_allclose(shown.geometry.direction, np.eye(3), atol=1e-12)
    straight = Volume(vol.array, Geometry(g.shape, g.spacing, g.origin, np.diag([-1.0, -1.0, 1.0])), None)
    data, kwargs, _ = image_layer_data(straight)
    assert data is straight.array and "source_voxels" not in kwargs["metadata"]  # nothing to reorient: no copy
    again = volume_from_image_layer(data, None, kwargs["affine"])
    np.testing.assert_allclose(again.geometry.direction, straight.geometry.direction, atol=1e-12)


def _landmarks() -> Landmarks:
    pos = np.array([[1.0, 2.0, 3.0], [np.nan] * 3, [-4.0, 5.5, 6.25], [0.5, -0.5, 9.0]])
    return Landmarks(["AC", "PC", "genu of CC", "splenium of CC"], pos, confidence=[0.9, np.nan, 0.2, np.nan],
                     status=["predicted", "missing", "predicted", "corrected"], image="img.nii.gz", model="m1")


def test_points_layer_data_round_trip():
    lms = _landmarks()
    data, kwargs, kind = points_layer_data(lms, "afids32", model_sha256="abc")
    assert kind == "points" and data.shape == (3, 3)
    np.testing.assert_array_equal(data[0], [3.0, 2.0, 1.0])  # LPS reversed
    feats = kwargs["features"]
    assert feats["landmark"] == ["AC", "genu of CC", "splenium of CC"]
    assert kwargs["metadata"]["protocol"] == "afids32" and kwargs["metadata"]["model_sha256"] == "abc"
    # low confidence gets the thick border; unknown confidence does not
    np.testing.assert_array_equal(kwargs["border_width"],
                                  [BORDER_WIDTH_NORMAL, BORDER_WIDTH_LOW_CONFIDENCE, BORDER_WIDTH_NORMAL])
    protocol = load_protocol("afids32")
    np.testing.assert_allclose(kwargs["face_color"][0, :3], protocol.color_rgb("AC"))
    # names come from the feature, not the order: shuffle the points
    order = [2, 0, 1]
    shuffled = {k: [v[i] for i in order] for k, v in feats.items()}
    back = landmarks_from_points(data[order], shuffled, kwargs["metadata"])
    assert back.names == lms.names and back.status == lms.status
    np.testing.assert_allclose(back.positions, lms.positions)
    np.testing.assert_allclose(back.confidence, lms.confidence)
    assert back.image == "img.nii.gz" and back.model == "m1"


def test_deleted_point_becomes_missing_and_unnamed_point_is_an_error():
    lms = _landmarks()
    data, kwargs, _ = points_layer_data(lms)
    feats = {k: list(v)[1:] for k, v in kwargs["features"].items()}
    back = landmarks_from_points(data[1:], feats, kwargs["metadata"])
    assert back.status[back.index_of("AC")] == "missing" and np.isnan(back.get("AC")).all()
    rows = measurement_rows(back, load_protocol("afids32"))
    assert {r[0]: np.isnan(r[3]) for r in rows} == {"AC-PC": True, "genu-splenium": False}
    feats["landmark"][0] = ""
    with pytest.raises(DGLandmarkError, match="no landmark name"):
        landmarks_from_points(data[1:], feats, kwargs["metadata"])


def test_table_rows_are_ras_and_protocol_guess():
    rows = landmark_table_rows(_landmarks())
    assert rows[0][:2] == ("AC", "predicted") and rows[0][3:] == (-1.0, -2.0, 3.0)
    assert np.isnan(rows[1][3])
    assert guess_protocol(["ac", "PC"]).name == "afids32"
    assert guess_protocol(["nope"]) is None


def test_empty_landmarks():
    lms = Landmarks(["AC"], np.full((1, 3), np.nan))
    data, kwargs, _ = points_layer_data(lms)
    assert data.shape == (0, 3)
    back = landmarks_from_points(data, kwargs["features"], kwargs["metadata"])
    assert back.names == ["AC"] and back.status == ["missing"]


def test_layers_module_imports_neither_napari_nor_qt():
    import subprocess
    import sys

    code = ("import sys, napari_dglandmark.layers; "
            "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'vispy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
