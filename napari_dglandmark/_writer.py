"""napari writers: a landmarks points layer -> .csv / .mrk.json / .fcsv / measurements CSV (atomic, via the core)."""

from __future__ import annotations

from typing import Any

from .errors import DGLandmarkError
from .io import write_landmarks
from .io.landmarks import Landmarks
from .layers import geometry_from_metadata, landmarks_from_points, protocol_of, review_flags
from .session import export_landmarks_csv, export_measurements_csv, measurement_triples


def _landmarks(data: Any, attributes: dict) -> Landmarks:
    """The layer's landmarks with what the model flagged and the image warning (kept in its metadata)."""
    meta = attributes.get("metadata") or {}
    landmarks = landmarks_from_points(data, attributes.get("features"), meta)
    if meta.get("needs_review"):
        landmarks.needs_review = review_flags(landmarks, meta["needs_review"])
    landmarks.image_warning = str(meta.get("image_warning") or "")
    return landmarks


def _fail(path: str, exc: Exception) -> DGLandmarkError:
    from napari.utils.notifications import show_error

    msg = str(exc) if getattr(exc, "path", None) else f"{path}: {exc}"
    show_error(msg)
    return DGLandmarkError(msg)


def write_points(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one points layer as landmarks; the format follows the file name; positions in RAS.

    CSV gets every export column (``i,j,k`` when the layer knows its image grid, model and sha256).
    """
    try:
        landmarks = _landmarks(data, attributes)
        meta = attributes.get("metadata") or {}
        protocol = protocol_of(meta, landmarks.names)
        if str(path).lower().endswith(".csv"):
            export_landmarks_csv(path, landmarks, "RAS", geometry_from_metadata(meta), meta.get("model_sha256"))
        else:
            write_landmarks(path, landmarks, coords="RAS", measurements=measurement_triples(landmarks, protocol))
    except (DGLandmarkError, OSError) as exc:
        raise _fail(path, exc) from None
    return [str(path)]


def write_measurements(path: str, data: Any, attributes: dict) -> list[str]:
    """Write the protocol's distances of one points layer: ``measurement,value_mm,from,to,status``."""
    try:
        landmarks = _landmarks(data, attributes)
        protocol = protocol_of(attributes.get("metadata"), landmarks.names)
        if protocol is None:
            raise DGLandmarkError("no protocol knows these landmark names, so no measurements are defined")
        export_measurements_csv(path, landmarks, protocol)
    except (DGLandmarkError, OSError) as exc:
        raise _fail(path, exc) from None
    return [str(path)]
