"""FreeSurfer MGH / MGZ volumes (``norm.mgz``, ``T1.mgz``, ...), which SimpleITK cannot read.

The format (FreeSurfer's ``mghformat``, big-endian): a 284-byte header, then the voxels, x fastest,
then optional tags (ignored). The header gives the voxel size ``delta``, the direction cosines of
the three axes (``Mdc``, in RAS) and the RAS position of the volume centre ``c_ras``, which is
voxel index ``dims / 2``. The vox2ras matrix is therefore ``M = Mdc diag(delta)``,
``P0 = c_ras - M dims / 2`` (the same as nibabel's ``MGHHeader.get_affine``); LPS is RAS with x
and y negated.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError
from .rawfile import ImageStream, to_native

MGH_SUFFIXES = (".mgz", ".mgh")
DATA_OFFSET = 284
# type code -> numpy type (big-endian on disk)
_TYPES = {0: ">u1", 1: ">i4", 3: ">f4", 4: ">i2", 10: ">u2"}
_NON_SCALAR = {5: "bitmap", 6: "tensor", 7: "complex64", 8: "complex128", 9: "RGB"}
# FreeSurfer's orientation when the header says its geometry is not valid (goodRASFlag 0): coronal
# LIA, i.e. axis columns x = left, y = inferior, z = anterior, 1 mm, centre at RAS 0
_DEFAULT_MDC = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def read_mgh(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxels (z, y, x [, frames reversed]), spacing (x, y, z), 4x4 vox2ras in LPS) of an .mgh / .mgz."""
    with ImageStream(path) as stream:
        raw = stream.read(DATA_OFFSET)
        if len(raw) < 90:
            raise DGLandmarkError(f"not a FreeSurfer MGH file: only {len(raw)} bytes", path)
        version, width, height, depth, frames, kind, _dof = struct.unpack(">7i", raw[:28])
        if version != 1:
            raise DGLandmarkError(f"not a FreeSurfer MGH file (version {version}, expected 1)", path)
        shape = (width, height, depth) + ((frames,) if frames != 1 else ())
        if min(shape) < 1:
            raise DGLandmarkError(f"corrupt MGH header: dimensions {shape}", path)
        if kind in _NON_SCALAR:
            raise DGLandmarkError(f"pixel type is {_NON_SCALAR[kind]}, not a scalar intensity; "
                                  "a grey-value 3D volume is needed", path)
        if kind not in _TYPES:
            raise DGLandmarkError(f"unknown MGH voxel type {kind}", path)
        (good_ras,) = struct.unpack(">h", raw[28:30])
        values = struct.unpack(">15f", raw[30:90])
        delta = np.array(values[:3], dtype=float)
        mdc = np.array(values[3:12], dtype=float).reshape(3, 3).T  # stored x_ras, y_ras, z_ras: columns
        c_ras = np.array(values[12:15], dtype=float)
        if not good_ras:
            delta, mdc, c_ras = np.ones(3), _DEFAULT_MDC, np.zeros(3)
        if not np.all(np.isfinite(delta)) or np.any(delta <= 0) or not np.all(np.isfinite(mdc)):
            raise DGLandmarkError(f"corrupt MGH header: voxel size {delta.tolist()}", path)
        stream.skip_to(DATA_OFFSET)
        flat = stream.read_array(np.dtype(_TYPES[kind]), math.prod(shape))
        stream.check_end()
    array = to_native(flat).reshape(shape[::-1])
    matrix = mdc * delta
    ras = np.eye(4)
    ras[:3, :3] = matrix
    ras[:3, 3] = c_ras - matrix @ (np.array([width, height, depth], dtype=float) / 2.0)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    return array, delta, lps
