"""Where a voxel grid sits in physical space: ``Geometry``, ``Volume`` and the one index <-> mm mapping.

Pure numpy (no SimpleITK, no reader): every reader (``io.volume``, ``io.dicom``, ``io.nifti``,
``io.mgh``) builds these objects, and nothing here imports a reader.

Conventions (the whole project uses them):
- ``Volume.array`` is indexed ``[k, j, i]`` = ``(z, y, x)`` (numpy order).
- A *voxel index* is continuous and given as ``(i, j, k)`` = ``(x, y, z)`` (SimpleITK order).
- Physical positions are millimetres in LPS (SimpleITK / DICOM space). RAS, which
  3D Slicer shows, is only a choice when reading or writing files.
- ``index_to_physical`` / ``physical_to_index`` are the only index <-> mm mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: file names ``read_volume`` reads (``.dcm``: one file of a DICOM series)
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh", ".dcm")


@dataclass(frozen=True)
class Geometry:
    """Where the voxel grid sits in physical LPS space."""

    shape: tuple[int, int, int]  # array shape (z, y, x)
    spacing: tuple[float, float, float]  # mm, (x, y, z)
    origin: tuple[float, float, float]  # LPS mm of voxel index (0, 0, 0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns: i, j, k axes in LPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=float).reshape(3, 3))

    @property
    def size(self) -> tuple[int, int, int]:
        """Grid size in index order (x, y, z)."""
        return tuple(int(n) for n in self.shape[::-1])

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """Continuous voxel index (..., 3) in (i, j, k) order -> LPS mm (..., 3)."""
        return index_to_physical(self, index)

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS mm (..., 3) -> continuous voxel index (..., 3) in (i, j, k) order."""
        return physical_to_index(self, points)

    def index_to_physical_matrix(self) -> np.ndarray:
        """The 4x4 affine taking homogeneous (i, j, k, 1) to homogeneous LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine


def index_to_physical(geometry: Geometry, index: np.ndarray) -> np.ndarray:
    """Continuous voxel index (i, j, k) -> physical LPS mm; the project's one forward mapping."""
    idx = np.asarray(index, dtype=float)
    matrix = geometry.direction @ np.diag(geometry.spacing)
    return idx @ matrix.T + np.asarray(geometry.origin, dtype=float)


def physical_to_index(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Physical LPS mm -> continuous voxel index (i, j, k); the inverse of ``index_to_physical``."""
    pts = np.asarray(points, dtype=float) - np.asarray(geometry.origin, dtype=float)
    matrix = geometry.direction @ np.diag(geometry.spacing)
    return np.linalg.solve(matrix, pts.reshape(-1, 3).T).T.reshape(pts.shape)


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """Flip the first two axes (RAS <-> LPS are the same operation)."""
    out = np.array(points, dtype=float, copy=True)
    out[..., :2] *= -1.0
    return out


lps_to_ras = ras_to_lps


def strip_volume_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case``."""
    lower = name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Volume:
    """Voxels (z, y, x) plus geometry and where they came from."""

    array: np.ndarray
    geometry: Geometry
    path: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.geometry.origin

    @property
    def direction(self) -> np.ndarray:
        return self.geometry.direction

    @property
    def name(self) -> str:
        """A short display name: the file name without its volume suffix."""
        if not self.path:
            return "volume"
        return strip_volume_suffix(Path(self.path).name)

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        return index_to_physical(self.geometry, index)

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        return physical_to_index(self.geometry, points)
