"""Synthetic test data: deformed copies keep landmarks on the anatomy; scanner shifts keep geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry, Volume
from training.synth import SITES, Deformation, deform, scanner_shift, thick_slices


def _dots(direction=None):
    """Three small bright blobs on a dark volume, with landmarks at their centres."""
    arr = np.zeros((48, 52, 44), np.float32)
    geom = Geometry(arr.shape, (1.0, 1.2, 0.9), (5.0, -3.0, 2.0), np.diag([-1.0, -1.0, 1.0]) if direction is None else direction)
    centres = np.array([[14.0, 20.0, 15.0], [30.0, 26.0, 30.0], [22.0, 36.0, 24.0]])  # i, j, k
    k, j, i = np.meshgrid(*(np.arange(n) for n in arr.shape), indexing="ij")
    for c in centres:
        arr += 1000 * np.exp(-((i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2) / (2 * 1.5**2))
    return Volume(arr, geom), Landmarks(["a", "b", "c"], geom.index_to_physical(centres))


def _centroid_near(volume: Volume, lps: np.ndarray, radius: int = 5) -> np.ndarray:
    centre = np.round(volume.physical_to_index(lps)).astype(int)
    sl = tuple(slice(max(c - radius, 0), c + radius + 1) for c in centre[::-1])
    block = volume.array[sl]
    k, j, i = np.meshgrid(*(np.arange(s.start, s.start + n) for s, n in zip(sl, block.shape, strict=True)),
                          indexing="ij")
    w = block.clip(min=0)
    idx = np.array([(w * i).sum(), (w * j).sum(), (w * k).sum()]) / w.sum()
    return volume.index_to_physical(idx)


@pytest.mark.parametrize("elastic_mm", [0.0, 2.0])
def test_deformed_landmarks_stay_on_the_anatomy(elastic_mm):
    volume, landmarks = _dots()
    for seed in range(3):
        moved_vol, moved = deform(volume, landmarks, np.random.default_rng(seed),
                                  Deformation(rotation_deg=10, scale=(0.9, 1.1), translation_mm=4, elastic_mm=elastic_mm))
        assert not np.allclose(moved.positions, landmarks.positions, atol=0.5)  # it really moved
        for n in range(3):
            found = _centroid_near(moved_vol, moved.positions[n])
            assert np.linalg.norm(found - moved.positions[n]) < 0.5, (seed, n)


@pytest.mark.parametrize("site", SITES, ids=[s.name for s in SITES])
def test_scanner_shift_keeps_geometry_and_changes_contrast(site):
    volume, _ = _dots()
    volume.array += 50.0
    shifted = scanner_shift(volume, site, np.random.default_rng(0))
    assert shifted.geometry == volume.geometry and shifted.array.shape == volume.array.shape
    assert np.isfinite(shifted.array).all()
    a = (volume.array - volume.array.mean()) / volume.array.std()
    b = (shifted.array - shifted.array.mean()) / shifted.array.std()
    assert np.abs(a - b).mean() > 0.01  # not the same image


def test_thick_slices_keep_positions_in_mm():
    """A bright plane stays where it was in mm when five 1 mm slices become one 5 mm slab."""
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # not the identity
    geom = Geometry(shape=(20, 6, 7), spacing=(1.0, 1.5, 1.2), origin=(3.0, -4.0, 10.0), direction=direction)
    arr = np.zeros(geom.shape, np.float32)
    arr[10:15] = 1.0  # the slab of new slice 2: old slices 10..14, centre 12
    thick = thick_slices(Volume(arr, geom), 5)
    assert thick.geometry.shape == (4, 6, 7) and thick.geometry.spacing == (1.0, 1.5, 6.0)
    assert thick.array[2].min() == 1.0 and thick.array[[0, 1, 3]].max() == 0.0
    np.testing.assert_allclose(thick.geometry.index_to_physical(np.array([1.0, 2.0, 2.0])),
                               geom.index_to_physical(np.array([1.0, 2.0, 12.0])), atol=1e-9)
