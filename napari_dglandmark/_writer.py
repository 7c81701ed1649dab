"""napari writers: a landmarks points layer -> .csv / .mrk.json / .fcsv (atomic, via the core)."""

from __future__ import annotations

from typing import Any

from .errors import DGLandmarkError
from .io import write_landmarks
from .layers import landmarks_from_points, protocol_of


def write_points(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one points layer as landmarks; the format follows the file name; positions in RAS."""
    try:
        landmarks = landmarks_from_points(data, attributes.get("features"), attributes.get("metadata"))
        protocol = protocol_of(attributes.get("metadata"), landmarks.names)
        measurements = protocol.measurement_triples() if protocol is not None else ()
        if protocol is not None:
            known = {n.casefold() for n in landmarks.names}
            measurements = [m for m in measurements if m[1].casefold() in known and m[2].casefold() in known]
        write_landmarks(path, landmarks, coords="RAS", measurements=measurements)
    except DGLandmarkError as exc:
        from napari.utils.notifications import show_error

        msg = str(exc) if exc.path else f"{path}: {exc}"
        show_error(msg)
        raise DGLandmarkError(msg) from None
    return [str(path)]
