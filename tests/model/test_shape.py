"""The shape model: similarity fits, outliers, the canonical frame of the bundled model, the head centre."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.model.preprocess import foreground_center
from napari_dglandmark.model.shape import fit_similarity, load_shape_model, robust_similarity
from training.warps import random_rotation


def _points(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=30.0, size=(32, 3))


def test_similarity_fit_recovers_a_known_transform():
    src = _points()
    rot = random_rotation(np.random.default_rng(1), 45.0)
    dst = 0.9 * src @ rot.T + np.array([5.0, -7.0, 12.0])
    fit = fit_similarity(src, dst)
    assert np.allclose(fit.apply(src), dst, atol=1e-9)
    assert fit.scale == pytest.approx(0.9) and np.allclose(fit.rotation, rot, atol=1e-9)
    assert np.allclose(fit.inverse().apply(dst), src, atol=1e-9)


def test_robust_fit_ignores_outliers_and_missing_rows():
    src = _points(2)
    rot = random_rotation(np.random.default_rng(3), 40.0)
    dst = src @ rot.T + 3.0
    dst[[4, 9, 17]] += np.array([[25.0, 0, 0], [0, -30.0, 5], [15, 15, -15]])  # gross errors
    dst[20] = np.nan
    fit, res = robust_similarity(src, dst)
    assert np.allclose(fit.rotation, rot, atol=1e-6) and fit.scale == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(res[20]) and (res[[4, 9, 17]] > 15).all()
    assert np.nanmax(np.delete(res, [4, 9, 17, 20])) < 1e-6
    plain = fit_similarity(src, dst)  # without the weights the outliers tilt the fit
    assert not np.allclose(plain.rotation, rot, atol=1e-3)


def test_shipped_shape_model_matches_the_protocol():
    from napari_dglandmark.protocols import load_protocol

    model = load_shape_model("afids32")
    assert model.names == list(load_protocol("afids32").names)
    assert model.reference.shape == (32, 3) and np.isfinite(model.spread).all()
    assert 0.5 < model.spread.min() and model.spread.max() < 15  # mm: real people vary by a few mm
    assert model.head_center is not None


def test_head_centre_ignores_neck_and_shoulders():
    """A 'head' ball above a wide 'body' block: the centre stays in the head."""
    z, y, x = np.mgrid[0:150, 0:80, 0:80]
    arr = np.zeros((150, 80, 80), np.float32)
    head = (x - 40) ** 2 + (y - 40) ** 2 + (z - 110) ** 2 < 35 ** 2  # 2 mm voxels: a 140 mm head
    arr[head] = 100
    arr[:60] = 80  # neck and shoulders fill the lower 120 mm
    geom = Geometry(arr.shape, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    centre = foreground_center(Volume(arr, geom, "neck.nii.gz"))
    head_centre = geom.index_to_physical(np.array([40.0, 40.0, 110.0]))
    assert np.linalg.norm(centre - head_centre) < 25, centre  # the centroid of all foreground is ~70 mm lower


def test_bundled_model_holds_a_45_degree_tilt(shared_data):
    """The canonical frame: the template tilted 45 degrees (pitch) is detected as well as upright."""
    from napari_dglandmark.io import read_landmarks, read_volume
    from napari_dglandmark.model.inference import Detector
    from napari_dglandmark.protocols import load_protocol
    from tests.conftest import GT_FCSV, T1W
    from training.synth import rotated_copy

    protocol = load_protocol("afids32")
    truth = protocol.conform(read_landmarks(GT_FCSV))
    volume, moved = rotated_copy(read_volume(T1W), truth, axis=0, angle_deg=45.0)
    pred = Detector("afids32", device="cpu").detect(volume)
    err = np.linalg.norm(pred.reordered(protocol.names).positions - moved.positions, axis=1)
    assert err.mean() < 1.0 and err.max() < 3.0, err
