"""NIfTI-1 / NIfTI-2 single files (.nii, .nii.gz): voxels read from the header's own description.

SimpleITK gives the geometry of NIfTI-1 files (its qform/sform rules, as for every other format)
from the header alone; it cannot read NIfTI-2, whose geometry is computed here (sform, else qform,
else pixdim: the standard's order). The voxels are always read here, because ITK's NIfTI reader zero-fills a truncated file, reads
``vox_offset`` 0 as "voxels start at byte 0", and applies ``scl_inter`` when ``scl_slope`` is 0.
Here, as the NIfTI standard says:

- the voxels start at ``vox_offset``; a value below the header size (often 0) means right after it;
- their type and size come from ``datatype`` (which fixes ``bitpix``), not from the array ITK makes;
- ``scl_slope`` 0 or NaN means unscaled; otherwise value = stored * scl_slope + scl_inter (float32,
  or float64 for float64 data).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DGLandmarkError
from .rawfile import ImageStream, first_reason, to_native

# datatype code -> numpy type of one scalar voxel
SCALAR_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                1280: "u8"}
# datatype codes that are not one grey value per voxel
NON_SCALAR_TYPES = {1: "1-bit binary", 32: "complex64", 128: "RGB24", 1536: "float128", 1792: "complex128",
                    2048: "complex256", 2304: "RGBA32"}
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


@dataclass(frozen=True)
class NiftiHeader:
    """The fields that say where the voxels are and what they mean."""

    version: int  # 1 or 2
    endian: str  # "<" or ">"
    shape: tuple[int, ...]  # dim[1 .. dim[0]], x fastest
    datatype: int
    bitpix: int
    vox_offset: int  # where the voxels start, after correcting an invalid (e.g. 0) value
    scl_slope: float
    scl_inter: float
    raw: bytes = b""  # the header itself (NIfTI-2 geometry is read from it)

    @property
    def header_size(self) -> int:
        return 348 if self.version == 1 else 540

    @property
    def scaled(self) -> bool:
        """Whether the stored values are to be scaled (slope finite, non-zero, and not the identity)."""
        if not math.isfinite(self.scl_slope) or self.scl_slope == 0:
            return False
        return not (self.scl_slope == 1 and (self.scl_inter == 0 or not math.isfinite(self.scl_inter)))


def parse_header(raw: bytes, path: Path) -> NiftiHeader:
    """Parse the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes of a single-file NIfTI."""
    if len(raw) < 348:
        raise DGLandmarkError(f"not a NIfTI file: only {len(raw)} bytes, a header needs 348", path)
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", raw[:4])
        if sizeof_hdr in (348, 540):
            break
    else:
        raise DGLandmarkError("not a NIfTI file (its header size field is neither 348 nor 540)", path)
    if sizeof_hdr == 348:
        magic = raw[344:348]
        if magic != b"n+1\x00":
            raise DGLandmarkError(f"not a single-file NIfTI (magic {magic!r}, expected 'n+1')", path)
        dim = struct.unpack(endian + "8h", raw[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
        vox_offset, slope, inter = struct.unpack(endian + "3f", raw[108:120])
        version, minimum = 1, 352
    else:
        if len(raw) < 540:
            raise DGLandmarkError(f"truncated NIfTI-2 header ({len(raw)} of 540 bytes)", path)
        if raw[4:12] != _NIFTI2_MAGIC:
            raise DGLandmarkError(f"not a single-file NIfTI-2 (magic {raw[4:12]!r})", path)
        datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
        dim = struct.unpack(endian + "8q", raw[16:80])
        (vox_offset,) = struct.unpack(endian + "q", raw[168:176])
        slope, inter = struct.unpack(endian + "2d", raw[176:192])
        version, minimum = 2, 544
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or any(int(n) < 1 for n in dim[1:ndim + 1]):
        raise DGLandmarkError(f"corrupt NIfTI header: dim = {list(dim)}", path)
    offset = float(vox_offset)
    if not math.isfinite(offset) or offset < minimum:
        offset = minimum  # vox_offset 0 (or another impossible value): the voxels follow the header
    return NiftiHeader(version, endian, tuple(int(n) for n in dim[1:ndim + 1]), int(datatype), int(bitpix),
                       int(offset), float(slope), float(inter), bytes(raw[:sizeof_hdr]))


def nifti2_ras_affine(header: NiftiHeader) -> np.ndarray:
    """The 4x4 index -> RAS matrix of a NIfTI-2 header: sform if set, else qform, else pixdim."""
    e, raw = header.endian, header.raw
    pixdim = np.array(struct.unpack(e + "8d", raw[104:168]))
    qform_code, sform_code = struct.unpack(e + "2i", raw[344:352])
    affine = np.eye(4)
    if sform_code > 0:
        affine[:3] = np.array(struct.unpack(e + "12d", raw[400:496])).reshape(3, 4)
        return affine
    zooms = pixdim[1:4]
    if qform_code <= 0:
        affine[:3, :3] = np.diag(zooms)
        return affine
    b, c, d, *offset = struct.unpack(e + "6d", raw[352:400])
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    affine[:3, :3] = rotation @ np.diag([zooms[0], zooms[1], zooms[2] * qfac])
    affine[:3, 3] = offset
    return affine


def voxel_dtype(header: NiftiHeader, path: Path) -> np.dtype:
    """The on-disk numpy type of one voxel; complex, RGB and other non-scalar types are refused."""
    if header.datatype in NON_SCALAR_TYPES:
        raise DGLandmarkError(f"pixel type is {NON_SCALAR_TYPES[header.datatype]}, not a scalar intensity; "
                              "a grey-value 3D volume is needed", path)
    if header.datatype not in SCALAR_TYPES:
        raise DGLandmarkError(f"unknown NIfTI datatype {header.datatype} (bitpix {header.bitpix})", path)
    return np.dtype(header.endian + SCALAR_TYPES[header.datatype])


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(voxels (z, y, x [, more axes reversed]), spacing, LPS origin, LPS direction) of a .nii / .nii.gz.

    The array keeps every axis the file has (the caller refuses what is not 3D); values are scaled
    as the header says. Spacing, origin and direction are those of the first three axes.
    """
    with ImageStream(path) as stream:
        raw = stream.read(348)
        if len(raw) >= 4 and 540 in (struct.unpack("<i", raw[:4])[0], struct.unpack(">i", raw[:4])[0]):
            raw += stream.read(540 - 348)
        header = parse_header(raw, path)
        dtype = voxel_dtype(header, path)
        count = math.prod(header.shape)
        stream.skip_to(header.vox_offset)
        flat = stream.read_array(dtype, count)
        stream.check_end()
    array = to_native(flat).reshape(header.shape[::-1])
    spacing, origin, direction = _geometry(header, path)
    if header.scaled:
        out = np.float64 if array.dtype == np.float64 else np.float32
        inter = header.scl_inter if math.isfinite(header.scl_inter) else 0.0
        scaled = array.astype(out)
        scaled *= out(header.scl_slope)
        if inter:
            scaled += out(inter)
        array = scaled
    return array, spacing, origin, direction


def _geometry(header: NiftiHeader, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if header.version == 2:
        lps = np.diag([-1.0, -1.0, 1.0]) @ nifti2_ras_affine(header)[:3]
        spacing = np.linalg.norm(lps[:, :3], axis=0)
        if np.any(spacing == 0):
            raise DGLandmarkError("corrupt NIfTI-2 header: a zero voxel size in its orientation matrix", path)
        return spacing, lps[:, 3], lps[:, :3] / spacing
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    try:
        info.ReadImageInformation()
    except RuntimeError as exc:
        raise DGLandmarkError(f"cannot read the image geometry: {first_reason(str(exc))}", path) from None
    n = info.GetDimension()
    k = min(3, n, len(header.shape))
    if tuple(info.GetSize()[:k]) != tuple(header.shape[:k]):
        raise DGLandmarkError(f"SimpleITK reads the grid as {info.GetSize()}, the header says {header.shape}", path)
    direction = np.array(info.GetDirection(), dtype=float).reshape(n, n)[:3, :3] if n >= 3 else np.eye(3)
    spacing = np.ones(3)
    origin = np.zeros(3)
    spacing[:k], origin[:k] = info.GetSpacing()[:k], info.GetOrigin()[:k]
    return spacing, origin, direction
