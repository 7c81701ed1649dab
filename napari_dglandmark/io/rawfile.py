"""Sequential reading of plain or gzip-compressed image files, in one pass, refusing truncated data.

The voxel readers (NIfTI, MGH) read a header, skip to the voxels and read them straight into a
numpy array; a gzip file is decompressed exactly once (Python's ``gzip`` checks each member's
CRC and length, so a truncated or damaged file is an error instead of zero-filled voxels).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DGLandmarkError

_CHUNK = 1 << 22


def is_gzip(path: Path) -> bool:
    """Whether the file starts with the gzip magic bytes (whatever its suffix says)."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


class ImageStream:
    """A forward-only byte stream of an image file; every failure is a one-line DGLandmarkError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0
        try:
            self.compressed = is_gzip(path)
            self._fh: BinaryIO = gzip.open(path, "rb") if self.compressed else open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise DGLandmarkError(f"cannot open image ({exc.strerror or exc})", path) from None

    def __enter__(self) -> ImageStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def _fail(self, exc: BaseException, what: str) -> DGLandmarkError:
        if isinstance(exc, EOFError):
            return DGLandmarkError(f"truncated compressed image: the data ends inside the {what}", self.path)
        if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
            return DGLandmarkError(f"corrupt compressed image ({exc})", self.path)
        return DGLandmarkError(f"cannot read image ({exc.__class__.__name__}: {exc})", self.path)

    def read(self, n: int, what: str = "header") -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the data)."""
        try:
            data = self._fh.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise self._fail(exc, what) from None
        self.position += len(data)
        return data

    def skip_to(self, offset: int, what: str = "header extensions") -> None:
        """Move forward to byte ``offset`` of the (uncompressed) data."""
        while self.position < offset:
            if not self.read(min(_CHUNK, offset - self.position), what):
                raise DGLandmarkError(f"truncated image: it ends at byte {self.position}, before the voxels "
                                      f"start at byte {offset}", self.path)

    def read_array(self, dtype: np.dtype, count: int) -> np.ndarray:
        """``count`` items of ``dtype``, read straight into a new array; a short file is refused."""
        out = np.empty(count, dtype=dtype)
        view = memoryview(out).cast("B")
        filled = 0
        try:
            while filled < len(view):
                n = self._fh.readinto(view[filled:filled + _CHUNK])
                if not n:
                    break
                filled += n
        except (OSError, EOFError, zlib.error) as exc:
            raise self._fail(exc, "voxel data") from None
        finally:
            view.release()
        self.position += filled
        if filled < out.nbytes:
            raise DGLandmarkError(f"truncated image: {filled} bytes of voxel data, the header says "
                                  f"{out.nbytes}", self.path)
        return out

    def check_end(self) -> None:
        """Read what follows the voxels, so that a damaged or cut gzip stream is noticed."""
        if not self.compressed:
            return
        try:
            while self._fh.read(_CHUNK):
                pass
        except gzip.BadGzipFile as exc:
            if str(exc).startswith("Not a gzipped file"):
                return  # bytes after the last complete member: ignored, as zlib-based readers do
            raise self._fail(exc, "data after the voxels") from None
        except (OSError, EOFError, zlib.error) as exc:
            raise self._fail(exc, "data after the voxels") from None


def to_native(array: np.ndarray) -> np.ndarray:
    """The same values in the machine's byte order (in place when possible)."""
    if array.dtype.byteorder in ("=", "|") or array.dtype.isnative:
        return array
    return array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))


def first_reason(text: str) -> str:
    """The informative line of a SimpleITK/ITK exception (they span many lines)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if "description:" in line.lower() or "error" in line.lower():
            return line.split(":", 1)[-1].strip() if "description:" in line.lower() else line
    return lines[-1] if lines else "unknown error"
