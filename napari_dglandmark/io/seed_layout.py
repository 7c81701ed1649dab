"""The seed's layout: one folder per case, one Line ``.mrk.json`` per measurement (``TCD.mrk.json``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError
from .landmarks import Landmarks
from .markups_json import read_mrk_json, write_line_json


def is_seed_case(folder: str | os.PathLike) -> bool:
    """True for a folder holding one or more ``*.mrk.json`` files (and no image series)."""
    path = Path(folder)
    return path.is_dir() and any(path.glob("*.mrk.json"))


def read_seed_case(folder: str | os.PathLike) -> Landmarks:
    """All line endpoints of a case folder, named ``<measurement>-1`` / ``<measurement>-2``."""
    path = Path(folder)
    files = sorted(path.glob("*.mrk.json"))
    if not files:
        raise DGLandmarkError("holds no .mrk.json files", path)
    names, positions, measurements = [], [], {}
    for file in files:
        part = read_mrk_json(file)
        measurement = file.name[: -len(".mrk.json")]
        for k, name in enumerate(part.names, 1):
            # Endpoints are named after the file, so that the identity never depends on labels.
            names.append(name if name.upper().startswith(measurement.upper() + "-") else f"{measurement}-{k}")
            positions.append(part.positions[k - 1])
        if len(part.measurements) == 1:  # like the endpoints, the measurement is named after the file
            measurements[measurement] = next(iter(part.measurements.values()))
        else:
            measurements.update(part.measurements)
    return Landmarks(names, np.array(positions), measurements=measurements)


def write_seed_case(folder: str | os.PathLike, landmarks: Landmarks,
                    measurements: Sequence[tuple[str, str, str]], coords: str = "RAS") -> list[Path]:
    """Write one Line file per ``(name, from, to)`` measurement into an existing folder."""
    path = Path(folder)
    if not path.is_dir():
        raise DGLandmarkError("output folder does not exist", path)
    written = []
    for name, a, b in measurements:
        target = path / f"{name}.mrk.json"
        write_line_json(target, name, landmarks.get(a), landmarks.get(b), [a, b], coords)
        written.append(target)
    return written
