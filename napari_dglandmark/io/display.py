"""A volume on an axis-aligned grid in the same physical LPS space, for viewers that cannot slice rotations (Qt-free).

napari slices a layer only along its data axes: a layer whose affine rotates or swaps axes is drawn
without the out-of-slice rotation (oblique scans: landmarks tens of mm off the anatomy) or not at all
(a permuted sagittal DICOM: a singular matrix). The display volume fixes that, as 3D Slicer does:

- direction a signed permutation (sagittal or coronal storage): the voxels are only transposed (and
  flipped where the axis runs backwards), exactly, no interpolation;
- any other direction (an oblique scan): the voxels are resampled (trilinear) onto an LPS-aligned grid
  that covers the whole scan, each axis keeping the spacing of the scan axis nearest to it.

The display grid always has the identity direction, so world = LPS mm stays the same for every layer.
The original volume is unchanged: detection runs on it, never on the display copy. The index <-> mm
mapping used is the core's (:meth:`Geometry.index_to_physical_matrix`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .volume import Geometry, Volume

#: how far from a signed permutation a direction matrix may be and still count as axis-aligned
#: (1e-3 is about 0.06 degrees: under 0.1 mm off at 100 mm from the centre)
AXIS_ALIGNED_TOL = 1e-3
#: what ``DisplayVolume.how`` can be
ORIGINAL, REORIENTED, RESAMPLED = "original", "reoriented", "resampled"


@dataclass(frozen=True)
class DisplayVolume:
    """Voxels (z, y, x) on an LPS-aligned grid, and how they were made from the original volume."""

    array: np.ndarray
    geometry: Geometry  # identity direction
    how: str  # ORIGINAL, REORIENTED or RESAMPLED
    rotation_degrees: float  # the largest angle between a scan axis and its nearest LPS axis

    def describe(self) -> str:
        """One line for a layer's metadata: what the viewer shows and what detection uses."""
        if self.how == ORIGINAL:
            return "shown on its own voxel grid"
        if self.how == REORIENTED:
            return ("shown reoriented (axes transposed/flipped, voxels unchanged) onto an LPS-aligned grid; "
                    "detection uses the original volume")
        return (f"shown resampled (trilinear) onto an LPS-aligned grid: the scan is oblique by "
                f"{self.rotation_degrees:.1f} degrees; detection uses the original, un-resampled volume")


def nearest_axes(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each scan axis (column of ``direction``): the LPS axis nearest to it and its sign (+1 / -1)."""
    d = np.asarray(direction, dtype=float)
    order = np.argsort(-np.abs(d).max(axis=0))  # most clearly aligned axes choose first
    axes = np.full(3, -1)
    free = [0, 1, 2]
    for col in order:
        row = max(free, key=lambda r: abs(d[r, col]))
        axes[col] = row
        free.remove(row)
    signs = np.sign(d[axes, np.arange(3)])
    signs[signs == 0] = 1.0
    return axes, signs


def obliquity_degrees(direction: np.ndarray) -> float:
    """The largest angle between a scan axis and the LPS axis nearest to it."""
    d = np.asarray(direction, dtype=float)
    axes, _ = nearest_axes(d)
    cosines = np.abs(d[axes, np.arange(3)]) / np.linalg.norm(d, axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def is_axis_aligned(direction: np.ndarray, tol: float = AXIS_ALIGNED_TOL) -> bool:
    """Whether ``direction`` is a signed permutation (within ``tol``)."""
    d = np.asarray(direction, dtype=float)
    axes, signs = nearest_axes(d)
    perm = np.zeros((3, 3))
    perm[axes, np.arange(3)] = signs
    return bool(np.abs(d - perm).max() <= tol)


def _reoriented(volume: Volume) -> DisplayVolume:
    """Transpose/flip the voxels so the grid's axes run along +L, +P, +S (exact, a view where possible)."""
    g = volume.geometry
    axes, signs = nearest_axes(g.direction)  # scan axis (i, j, k) -> LPS axis
    arr = volume.array
    for col in range(3):  # flip scan axes that run backwards (numpy axis of scan axis col is 2 - col)
        if signs[col] < 0:
            arr = np.flip(arr, axis=2 - col)
    # numpy axis of LPS axis r must be 2 - r: scan axis col sits on numpy axis 2 - col
    source_axis = {int(axes[col]): 2 - col for col in range(3)}
    arr = np.transpose(arr, [source_axis[2 - n] for n in range(3)])
    size = np.array(g.size)
    far_corner = np.where(signs < 0, size - 1, 0)  # the (i, j, k) index that becomes the new (0, 0, 0)
    origin = g.index_to_physical(far_corner.astype(float))
    spacing = np.empty(3)
    spacing[axes] = g.spacing
    geometry = Geometry(arr.shape, tuple(float(s) for s in spacing), tuple(float(o) for o in origin), np.eye(3))
    return DisplayVolume(arr, geometry, REORIENTED, obliquity_degrees(g.direction))


def display_grid(geometry: Geometry) -> Geometry:
    """The LPS-aligned grid covering the whole scan (its 8 corner voxels' centres), spacing per nearest axis."""
    axes, _ = nearest_axes(geometry.direction)
    spacing = np.empty(3)
    spacing[axes] = geometry.spacing
    size = np.array(geometry.size) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], dtype=float)
    lps = geometry.index_to_physical(corners)
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    counts = np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1
    return Geometry(tuple(int(n) for n in counts[::-1]), tuple(float(s) for s in spacing),
                    tuple(float(v) for v in lo), np.eye(3))


def resample_onto(volume: Volume, grid: Geometry, fill: float | None = None) -> np.ndarray:
    """The volume's voxels trilinearly interpolated at the centres of ``grid``'s voxels; ``fill`` outside."""
    from scipy.ndimage import affine_transform

    src = volume.geometry.index_to_physical_matrix()  # (i, j, k, 1) -> LPS
    dst = grid.index_to_physical_matrix()
    ijk = np.linalg.solve(src, dst)  # grid (i, j, k) -> source (i, j, k)
    flip = np.eye(4)[[2, 1, 0, 3]]  # (i, j, k) <-> numpy (k, j, i)
    kji = flip @ ijk @ flip
    arr = volume.array
    if fill is None:
        fill = float(np.min(arr)) if arr.size else 0.0
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    out = affine_transform(arr.astype(np.float32, copy=False) if arr.dtype != out_dtype else arr, kji[:3, :3],
                           offset=kji[:3, 3], output_shape=grid.shape, output=out_dtype, order=1,
                           mode="constant", cval=fill, prefilter=False)
    if np.issubdtype(arr.dtype, np.integer):  # back to the scan's own type: no 4x memory for 8-bit scans
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(arr.dtype)
    return out


def display_volume(volume: Volume, tol: float = AXIS_ALIGNED_TOL) -> DisplayVolume:
    """What a viewer that slices only along data axes should show for ``volume`` (see the module docstring)."""
    g = volume.geometry
    if np.allclose(g.direction, np.diag(np.sign(np.diag(g.direction))), atol=tol, rtol=0) \
            and np.all(np.diag(g.direction) != 0):
        # flips alone napari slices fine: the voxels stay as they are, the direction is snapped to exact signs
        snapped = Geometry(g.shape, g.spacing, g.origin, np.diag(np.sign(np.diag(g.direction))))
        return DisplayVolume(volume.array, snapped, ORIGINAL, obliquity_degrees(g.direction))
    if is_axis_aligned(g.direction, tol):
        return _reoriented(volume)
    grid = display_grid(g)
    return DisplayVolume(resample_onto(volume, grid), grid, RESAMPLED, obliquity_degrees(g.direction))
