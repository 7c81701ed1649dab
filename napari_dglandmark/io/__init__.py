"""Reading and writing volumes and landmark files (Qt-free)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DGLandmarkError
from .csv_table import read_csv, read_csv_table, write_csv
from .fcsv import read_fcsv, write_fcsv
from .geometry import Geometry, Volume, index_to_physical, lps_to_ras, physical_to_index, ras_to_lps
from .landmarks import Landmarks
from .markups_json import read_mrk_json, write_mrk_json
from .seed_layout import is_seed_case, read_seed_case, write_seed_case
from .volume import read_volume, write_volume

LANDMARK_SUFFIXES = (".mrk.json", ".fcsv", ".csv")

__all__ = [
    "Geometry", "Landmarks", "Volume", "index_to_physical", "physical_to_index", "ras_to_lps", "lps_to_ras",
    "read_volume", "write_volume", "read_landmarks", "write_landmarks", "landmark_format",
    "read_csv", "read_csv_table", "write_csv", "read_fcsv", "write_fcsv", "read_mrk_json", "write_mrk_json",
    "read_seed_case", "write_seed_case", "is_seed_case", "LANDMARK_SUFFIXES",
]


def landmark_format(path: str | os.PathLike) -> str:
    """``mrk.json``, ``fcsv`` or ``csv`` from a file name; a clear error otherwise."""
    name = Path(path).name.lower()
    for suffix in LANDMARK_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise DGLandmarkError("unknown landmark file type; use .mrk.json, .fcsv or .csv", path)


def read_landmarks(path: str | os.PathLike) -> Landmarks:
    """Read a landmark file (by extension) or a seed case folder of Line ``.mrk.json`` files."""
    src = Path(path)
    if src.is_dir():
        return read_seed_case(src)
    if not src.exists():
        raise DGLandmarkError("no such file", src)
    fmt = landmark_format(src)
    if fmt == "mrk.json":
        return read_mrk_json(src)
    if fmt == "fcsv":
        return read_fcsv(src)
    return read_csv(src)


def write_landmarks(path: str | os.PathLike, landmarks: Landmarks, coords: str = "RAS",
                    geometry: Geometry | None = None,
                    measurements: Sequence[tuple[str, str, str]] = ()) -> None:
    """Write landmarks by extension, atomically. ``.mrk.json`` gets one Line per measurement."""
    fmt = landmark_format(path)
    if fmt == "mrk.json":
        write_mrk_json(path, landmarks, coords, measurements=measurements)
    elif fmt == "fcsv":
        write_fcsv(path, landmarks, coords)
    else:
        write_csv(path, landmarks, coords, geometry)
