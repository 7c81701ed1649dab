"""The display grid of oblique and permuted volumes (io.display): same LPS space, axis-aligned, exact where it can be."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_dglandmark.io.display import (
    ORIGINAL,
    REORIENTED,
    RESAMPLED,
    display_volume,
    is_axis_aligned,
    obliquity_degrees,
)
from napari_dglandmark.io.volume import Geometry, Volume


def _volume(direction, shape=(7, 9, 11), spacing=(1.0, 1.5, 2.5), origin=(3.0, -4.0, 10.0)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.integers(0, 1000, shape).astype(np.int16), Geometry(shape, spacing, origin, direction))


def _value_at(volume: Volume, lps: np.ndarray) -> np.ndarray:
    ijk = np.rint(volume.physical_to_index(lps)).astype(int)
    return volume.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]]


SIGNED_PERMUTATIONS = [np.eye(3)[list(p)].T * np.array(s) for p in itertools.permutations(range(3))
                       for s in itertools.product((1, -1), repeat=3)]


@pytest.mark.parametrize("n", range(0, 48, 5))
def test_signed_permutations_are_reoriented_exactly(n):
    direction = SIGNED_PERMUTATIONS[n]
    volume = _volume(direction)
    shown = display_volume(volume)
    diagonal = np.allclose(direction, np.diag(np.diag(direction)))
    assert shown.how == (ORIGINAL if diagonal else REORIENTED)
    if shown.how == REORIENTED:
        np.testing.assert_array_equal(shown.geometry.direction, np.eye(3))
        assert sorted(shown.array.shape) == sorted(volume.array.shape)
    # every voxel of the display grid holds the original voxel at the same LPS point
    g = shown.geometry
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in g.size], indexing="ij"), -1).reshape(-1, 3)
    lps = g.index_to_physical(ijk.astype(float))
    np.testing.assert_array_equal(shown.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]], _value_at(volume, lps))


def test_oblique_volume_is_resampled_in_the_same_space():
    a = np.radians(18.0)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    shape = (20, 30, 24)
    volume = Volume(np.zeros(shape, np.float32), Geometry(shape, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), direction))
    # a smooth field, so trilinear interpolation is exact: intensity = a linear function of the LPS position
    kji = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    lps = volume.index_to_physical(kji[:, ::-1].astype(float))
    volume.array[...] = (lps @ np.array([1.0, 2.0, -0.5]) + 100).reshape(shape)
    shown = display_volume(volume)
    assert shown.how == RESAMPLED
    assert shown.rotation_degrees == pytest.approx(18.0, abs=1e-6)
    np.testing.assert_array_equal(shown.geometry.direction, np.eye(3))
    assert shown.geometry.spacing == (1.0, 1.0, 2.0)  # each axis keeps its scan axis' spacing
    g = shown.geometry
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in g.size], indexing="ij"), -1).reshape(-1, 3)
    points = g.index_to_physical(ijk.astype(float))
    src = volume.physical_to_index(points)
    inside = np.all((src >= 0) & (src <= np.array(volume.geometry.size) - 1), axis=1)
    assert inside.sum() > 0.5 * volume.array.size
    got = shown.array[ijk[inside, 2], ijk[inside, 1], ijk[inside, 0]]
    np.testing.assert_allclose(got, points[inside] @ np.array([1.0, 2.0, -0.5]) + 100, atol=1e-3)
    # the grid covers the whole scan: all 8 corner voxels' centres are inside it
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in volume.geometry.size])), float)
    grid_idx = g.physical_to_index(volume.index_to_physical(corners))
    assert np.all(grid_idx >= -1e-6) and np.all(grid_idx <= np.array(g.size) - 1 + 1e-6)


def test_integer_scans_stay_integer_and_outside_is_the_minimum():
    a = np.radians(30.0)
    direction = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    volume = _volume(direction)
    shown = display_volume(volume)
    assert shown.array.dtype == np.int16
    assert shown.array[0, 0, 0] == volume.array.min()  # a grid corner lies outside an oblique scan


def test_obliquity_and_alignment():
    assert obliquity_degrees(np.eye(3)) == 0.0
    assert is_axis_aligned(SIGNED_PERMUTATIONS[7])
    a = np.radians(0.5)
    tilted = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    assert not is_axis_aligned(tilted)
    assert obliquity_degrees(tilted) == pytest.approx(0.5)
