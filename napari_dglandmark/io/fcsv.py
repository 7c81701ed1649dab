"""Legacy 3D Slicer fiducial CSV (``.fcsv``)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError
from .atomic import write_text_atomic
from .geometry import ras_to_lps
from .landmarks import Landmarks, check_coordinate_system

_DEFAULT_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc",
                    "associatedNodeID"]
_SYSTEM_CODES = {"0": "RAS", "1": "LPS", "RAS": "RAS", "LPS": "LPS"}


def landmark_name(label: str, description: str) -> tuple[str, str]:
    """(name, description) of a Slicer point: the label, or the description when the label is a bare number."""
    label, description = label.strip(), description.strip()
    if (not label or label.isdigit()) and description:
        return description, ""
    return label, description


def read_fcsv(path: str | os.PathLike) -> Landmarks:
    """Read a ``.fcsv``; ``# CoordinateSystem`` 0/RAS or 1/LPS (missing: LPS, Slicer's default)."""
    src = Path(path)
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DGLandmarkError(f"cannot read fcsv: {exc.__class__.__name__}", src) from None
    system, columns, rows = "LPS", list(_DEFAULT_COLUMNS), []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                if value not in _SYSTEM_CODES:
                    raise DGLandmarkError(f"line {number}: unsupported CoordinateSystem {value!r}", src)
                system = _SYSTEM_CODES[value]
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
            continue
        rows.append((number, line))
    missing = {"x", "y", "z", "label"} - set(columns)
    if missing:
        raise DGLandmarkError(f"columns header lacks {', '.join(sorted(missing))}", src)
    names, positions, descriptions = [], [], []
    for number, line in rows:
        fields = next(csv.reader([line]))
        if len(fields) < len(columns) - 1:  # Slicer may drop an empty trailing associatedNodeID
            raise DGLandmarkError(f"line {number}: {len(fields)} fields, expected {len(columns)}", src)
        record = dict(zip(columns, fields + [""] * (len(columns) - len(fields)), strict=False))
        try:
            xyz = [float(record[c]) for c in ("x", "y", "z")]
        except ValueError:
            raise DGLandmarkError(f"line {number}: position is not numeric", src) from None
        if not np.all(np.isfinite(xyz)):
            raise DGLandmarkError(f"line {number}: position is not finite", src)
        name, description = landmark_name(record.get("label", ""), record.get("desc", ""))
        if not name:
            raise DGLandmarkError(f"line {number}: point has neither label nor description", src)
        # Slicer 5 appends positionStatus (0 undefined, 1 preview, 2 defined) after the declared
        # columns and writes 0,0,0 for an undefined point: that point has no position.
        if columns == _DEFAULT_COLUMNS and len(fields) > len(columns) and fields[len(columns)].strip() in ("0", "1"):
            xyz = [np.nan] * 3
        names.append(name)
        descriptions.append(description)
        positions.append(xyz)
    if not names:
        raise DGLandmarkError("holds no points", src)
    pos = np.array(positions, dtype=float)
    if system == "RAS":
        pos = ras_to_lps(pos)
    try:
        return Landmarks(names, pos, descriptions)
    except DGLandmarkError as exc:
        raise DGLandmarkError(str(exc), src) from None


def format_fcsv(landmarks: Landmarks, coords: str = "RAS") -> str:
    """The text of a ``.fcsv`` (Slicer 5 style header); missing landmarks are left out."""
    system = check_coordinate_system(coords)
    pos = landmarks.positions_in(system)
    out = io.StringIO()
    out.write("# Markups fiducial file version = 5.6\n")
    out.write(f"# CoordinateSystem = {system}\n")
    out.write(f"# columns = {','.join(_DEFAULT_COLUMNS)}\n")
    writer = csv.writer(out, lineterminator="\n")
    for i, name in enumerate(landmarks.names):
        if not landmarks.defined[i]:
            continue
        x, y, z = (repr(float(v)) for v in pos[i])
        writer.writerow([i + 1, x, y, z, 0, 0, 0, 1, 1, 1, 0, name, landmarks.descriptions[i], ""])
    return out.getvalue()


def write_fcsv(path: str | os.PathLike, landmarks: Landmarks, coords: str = "RAS") -> None:
    """Write a ``.fcsv`` atomically."""
    write_text_atomic(path, format_fcsv(landmarks, coords))
