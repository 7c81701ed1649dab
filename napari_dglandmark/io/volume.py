"""Reading and writing 3D volumes: SimpleITK, our NIfTI / MGH / DICOM readers; written with SimpleITK.

``Geometry``, ``Volume`` and the index <-> mm mapping live in ``io.geometry`` (the readers build
them; nothing there imports a reader) and are re-exported here, so ``from .volume import Volume``
keeps working. Conventions: see ``io.geometry``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DGLandmarkError
from .atomic import atomic_path, check_output_path
from .geometry import (
    VOLUME_SUFFIXES,
    Geometry,
    Volume,
    index_to_physical,
    lps_to_ras,
    physical_to_index,
    ras_to_lps,
    strip_volume_suffix,
)
from .rawfile import first_reason as _first_reason

__all__ = ["VOLUME_SUFFIXES", "Geometry", "Volume", "index_to_physical", "physical_to_index", "ras_to_lps",
           "lps_to_ras", "strip_volume_suffix", "is_volume_file", "geometry_from_sitk", "check_grid",
           "check_geometry", "volume_from_sitk", "volume_to_sitk", "read_volume", "write_volume"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_MGH_SUFFIXES = (".mgz", ".mgh")
_COMPLEX_PIXELS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def is_volume_file(path: str | os.PathLike) -> bool:
    """Whether a file name is one that ``read_volume`` reads as a volume on its own.

    ``.dcm`` is left out: a DICOM file is usually one slice, and DICOM is read by folder.
    """
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES if s != ".dcm")


def geometry_from_sitk(image: sitk.Image) -> Geometry:
    """Geometry of a 3D SimpleITK image."""
    size = image.GetSize()
    return Geometry(
        shape=(int(size[2]), int(size[1]), int(size[0])),
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=np.array(image.GetDirection(), dtype=float).reshape(3, 3),
    )


def check_grid(size: tuple[int, ...], where: str | os.PathLike) -> int:
    """The number of axes that count (trailing axes of length 1 beyond the third do not); 3D or refused."""
    size = tuple(int(n) for n in size)
    dim = len(size)
    while dim > 3 and size[dim - 1] == 1:
        dim -= 1
    if dim != 3:
        raise DGLandmarkError(f"is a {dim}D image {size[:max(dim, 1)]}; a 3D volume is needed", where)
    if min(size[:3]) < 2:
        raise DGLandmarkError(f"is a single slice {size[:3]} (2D); a 3D volume is needed", where)
    return dim


def check_geometry(geometry: Geometry, where: str | os.PathLike) -> None:
    """Refuse what no physical grid can be: non-positive or non-finite voxel sizes, a singular direction."""
    spacing = np.asarray(geometry.spacing, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise DGLandmarkError(f"implausible voxel size {tuple(spacing.tolist())} mm", where)
    direction = geometry.direction
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6 \
            or not np.all(np.isfinite(geometry.origin)):
        raise DGLandmarkError("invalid orientation or origin in the image header", where)


def volume_from_sitk(image: sitk.Image, path: str | None = None) -> Volume:
    """Wrap a SimpleITK image, checking that it is a scalar 3D volume."""
    where = path or "image"
    if image.GetPixelID() in _COMPLEX_PIXELS:
        raise DGLandmarkError(f"pixel type is {image.GetPixelIDTypeAsString()}, not a scalar intensity; "
                              "a grey-value 3D volume is needed", where)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DGLandmarkError(
            f"has {image.GetNumberOfComponentsPerPixel()} components per voxel, not a scalar intensity; "
            "a scalar (grey-value) 3D volume is needed",
            where,
        )
    dim = check_grid(image.GetSize(), where)
    if image.GetDimension() > dim:
        image = image[(slice(None),) * 3 + (0,) * (image.GetDimension() - 3)]
    volume = Volume(sitk.GetArrayFromImage(image), geometry_from_sitk(image), path)
    check_geometry(volume.geometry, where)
    return volume


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """The SimpleITK image of a Volume, geometry included."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in volume.direction.ravel()])
    return image


def read_volume(path: str | os.PathLike, series: str | None = None) -> Volume:
    """Read a NIfTI / NRRD / MetaImage / FreeSurfer MGH file or a DICOM folder as a 3D Volume.

    ``series`` picks one volume of a DICOM folder that holds several (the error listing them gives
    their ids); it is ignored for other files.
    """
    src = Path(path)
    if not src.exists():
        raise DGLandmarkError("no such file or folder", src)
    name = src.name.lower()
    if src.is_dir() or name.endswith(".dcm"):
        from .dicom import read_dicom

        volume = read_dicom(src, series)
        check_grid(volume.geometry.size, src)
        check_geometry(volume.geometry, src)
        return volume
    if name.endswith(_NIFTI_SUFFIXES):
        return _read_nifti(src)
    if name.endswith(_MGH_SUFFIXES):
        return _read_mgh(src)
    try:
        image = sitk.ReadImage(str(src))
    except RuntimeError as exc:
        reason = _first_reason(str(exc))
        raise DGLandmarkError(f"cannot read image (corrupt, truncated or unsupported): {reason}", src) from None
    try:
        return volume_from_sitk(image, str(src))
    except RuntimeError as exc:  # truncated compressed data surfaces only when pixels are read
        raise DGLandmarkError(f"cannot read image voxels: {_first_reason(str(exc))}", src) from None


def _read_nifti(src: Path) -> Volume:
    """NIfTI voxels as the header describes them, in one pass (see ``io.nifti`` for the geometry)."""
    from .nifti import read_nifti

    array, spacing, origin, direction = read_nifti(src)
    dim = check_grid(array.shape[::-1], src)
    array = array.reshape(array.shape[-3:]) if array.ndim > dim else array
    geometry = Geometry(array.shape, tuple(float(v) for v in spacing), tuple(float(v) for v in origin), direction)
    check_geometry(geometry, src)
    return Volume(array, geometry, str(src))


def _read_mgh(src: Path) -> Volume:
    """A FreeSurfer .mgz / .mgh volume (see ``io.mgh``)."""
    from .mgh import read_mgh

    array, spacing, lps = read_mgh(src)
    dim = check_grid(array.shape[::-1], src)
    array = array.reshape(array.shape[-3:]) if array.ndim > dim else array
    geometry = Geometry(array.shape, tuple(float(v) for v in spacing), tuple(float(v) for v in lps[:3, 3]),
                        lps[:3, :3] / spacing)
    check_geometry(geometry, src)
    return Volume(array, geometry, str(src))


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a Volume (format from the suffix) atomically."""
    if str(path).lower().endswith(_DETACHED_SUFFIXES):
        _write_detached(volume, check_output_path(path), compress)
        return
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(volume_to_sitk(volume), str(tmp), compress)
        except RuntimeError as exc:
            raise DGLandmarkError(f"cannot write image: {_first_reason(str(exc))}", path) from None


# Header + data file pairs: the header names its data file, so both must be written under their
# final names (in a private temporary folder) and moved in, data first, header last.
_DETACHED_SUFFIXES = (".mhd", ".nhdr")


def _write_detached(volume: Volume, out: Path, compress: bool) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmpdir:
        tmp = Path(tmpdir) / out.name
        try:
            sitk.WriteImage(volume_to_sitk(volume), str(tmp), compress)
        except RuntimeError as exc:
            raise DGLandmarkError(f"cannot write image: {_first_reason(str(exc))}", out) from None
        for part in sorted(Path(tmpdir).iterdir(), key=lambda f: f.name == out.name):
            os.replace(part, out.parent / part.name)
