"""3D Slicer markups JSON (``.mrk.json``, schema v1.0.x): point lists and lines."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError
from .atomic import write_text_atomic
from .fcsv import landmark_name
from .geometry import ras_to_lps
from .landmarks import Landmarks, check_coordinate_system

SCHEMA_URL = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
              "Resources/Schema/markups-schema-v1.0.3.json#")
# Our statuses that Slicer does not know travel in a per-point key Slicer ignores.
_STATUS_KEY = "dglandmarkStatus"
_CONFIDENCE_KEY = "dglandmarkConfidence"
_REVIEW_KEY = "dglandmarkNeedsReview"
_WARNING_KEY = "dglandmarkImageWarning"  # on the point list: why the image is not what the model was made for
#: what a flagged point's description says (Slicer's Markups table shows descriptions)
REVIEW_NOTE = "NEEDS REVIEW"
# Slicer draws selected points in ``selectedColor``: flagged points are the selected ones.
REVIEW_COLOR = [1.0, 0.0, 1.0]


def _with_note(description: str) -> str:
    if REVIEW_NOTE.casefold() in description.casefold():
        return description
    return f"{description}; {REVIEW_NOTE}" if description else REVIEW_NOTE


def _without_note(description: str) -> str:
    for suffix in (f"; {REVIEW_NOTE}", REVIEW_NOTE):
        if description.endswith(suffix):
            return description[: -len(suffix)]
    return description


def _load_json(src: Path) -> dict:
    try:
        data = json.loads(src.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DGLandmarkError(f"cannot read: {exc.__class__.__name__}", src) from None
    except json.JSONDecodeError as exc:
        raise DGLandmarkError(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", src) from None
    if not isinstance(data, dict) or not isinstance(data.get("markups"), list):
        raise DGLandmarkError("not a Slicer markups file (no 'markups' list)", src)
    return data


def _points_of(markup: dict, src: Path, where: str) -> tuple[list, np.ndarray, list, list, list, list]:
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise DGLandmarkError(f"{where}: unsupported coordinateSystem {system!r}", src)
    names, positions, descriptions, status, confidence, review = [], [], [], [], [], []
    points = markup.get("controlPoints", [])
    if not isinstance(points, list):
        raise DGLandmarkError(f"{where}: 'controlPoints' is not a list", src)
    for n, point in enumerate(points, 1):
        if not isinstance(point, dict):
            raise DGLandmarkError(f"{where}: control point {n} is not an object", src)
        name, description = landmark_name(str(point.get("label", "")), str(point.get("description", "")))
        if not name:
            name = f"{markup.get('name') or 'P'}-{n}"
        defined = point.get("positionStatus", "defined") == "defined" and "position" in point
        if defined:
            pos = point["position"]
            if (not isinstance(pos, list) or len(pos) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pos)):
                raise DGLandmarkError(f"{where}: control point {name!r} has a malformed position", src)
            xyz = np.array(pos, dtype=float)
            if system == "RAS":
                xyz = ras_to_lps(xyz)
        else:
            xyz = np.full(3, np.nan)
        flagged = point.get(_REVIEW_KEY)
        review.append(None if flagged is None else bool(flagged))
        if flagged:
            description = _without_note(description)
        names.append(name)
        descriptions.append(description)
        positions.append(xyz)
        # A point without a position is missing whatever our own status key says.
        status.append(str(point.get(_STATUS_KEY) or "defined") if defined else "missing")
        try:
            confidence.append(float(point.get(_CONFIDENCE_KEY, np.nan)))
        except (TypeError, ValueError):
            raise DGLandmarkError(f"{where}: control point {name!r} has a non-numeric {_CONFIDENCE_KEY}",
                                  src) from None
    return names, np.array(positions, dtype=float).reshape(-1, 3), descriptions, status, confidence, review


def read_mrk_json(path: str | os.PathLike) -> Landmarks:
    """Read landmarks from a ``.mrk.json``.

    Points come from the point lists (``Fiducial``); when there are none, the endpoints of
    the ``Line`` markups are the landmarks (named ``<line>-1``/``<line>-2`` unless labelled).
    Line lengths are kept in ``Landmarks.measurements``.
    """
    src = Path(path)
    data = _load_json(src)
    fiducials = [m for m in data["markups"] if isinstance(m, dict) and m.get("type") == "Fiducial"]
    lines = [m for m in data["markups"] if isinstance(m, dict) and m.get("type") == "Line"]
    if not fiducials and not lines:
        raise DGLandmarkError("holds no point list or line markup", src)
    names, positions, descriptions, status, confidence, review = [], [], [], [], [], []
    warning = ""
    measurements: dict[str, float] = {}
    for n, line in enumerate(lines, 1):
        line_name = str(line.get("name") or f"Line{n}")
        for item in line.get("measurements", []) or []:
            if isinstance(item, dict) and item.get("name") == "length" and "value" in item:
                measurements[line_name] = float(item["value"])
    sources = fiducials if fiducials else lines
    for n, markup in enumerate(sources, 1):
        where = f"markup {n} ({markup.get('name', markup.get('type'))})"
        if markup is not None and markup.get("type") == "Line":
            markup = dict(markup)
            markup.setdefault("name", f"Line{n}")
            for k, point in enumerate(markup.get("controlPoints", []), 1):
                if isinstance(point, dict) and not str(point.get("label", "")).strip():
                    point["label"] = f"{markup['name']}-{k}"
        part = _points_of(markup, src, where)
        names += part[0]
        positions.append(part[1])
        descriptions += part[2]
        status += part[3]
        confidence += part[4]
        review += part[5]
        warning = warning or str(markup.get(_WARNING_KEY) or "")
    if not names:
        raise DGLandmarkError("holds no control points", src)
    flags = None if all(r is None for r in review) else np.array([bool(r) for r in review])
    try:
        return Landmarks(names, np.concatenate(positions), descriptions, np.array(confidence), status,
                         measurements=measurements, needs_review=flags, image_warning=warning)
    except DGLandmarkError as exc:
        raise DGLandmarkError(str(exc), src) from None


def _control_point(k: int, name: str, description: str, position: np.ndarray | None,
                   status: str | None = None, confidence: float = float("nan"),
                   needs_review: bool | None = None) -> dict:
    """One control point; a flagged one (``needs_review``) is Slicer-"selected" and its description says so
    (a point not flagged loses the note: a person reviewed it)."""
    if needs_review is not None:
        description = _with_note(description) if needs_review else _without_note(description)
    point: dict = {"id": str(k), "label": name, "description": description, "associatedNodeID": ""}
    if position is None or np.isnan(position).any():
        point["positionStatus"] = "undefined"
    else:
        point["position"] = [float(v) for v in position]
        point["orientation"] = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
        point["positionStatus"] = "defined"
    point.update({"selected": True if needs_review is None else bool(needs_review), "locked": False,
                  "visibility": True})
    if status is not None:
        point[_STATUS_KEY] = status
    if np.isfinite(confidence):
        point[_CONFIDENCE_KEY] = float(confidence)
    if needs_review is not None:
        point[_REVIEW_KEY] = bool(needs_review)
    return point


def line_markup(name: str, a: np.ndarray, b: np.ndarray, system: str, endpoint_names: Sequence[str],
                color: Sequence[float] | None = None) -> dict:
    """A Slicer ``Line`` markup between two positions (already in ``system``), with its length."""
    points = [_control_point(1, endpoint_names[0], "", a), _control_point(2, endpoint_names[1], "", b)]
    markup: dict = {"type": "Line", "name": name, "coordinateSystem": system, "coordinateUnits": "mm",
                    "locked": False, "labelFormat": "%N-%d", "controlPoints": points}
    if not (np.isnan(a).any() or np.isnan(b).any()):
        markup["measurements"] = [{"name": "length", "enabled": True, "value": float(np.linalg.norm(a - b)),
                                   "units": "mm", "printFormat": "%-#4.4g%s"}]
    if color is not None:
        markup["display"] = {"color": [float(c) for c in color], "selectedColor": [float(c) for c in color]}
    return markup


def markups_document(landmarks: Landmarks, coords: str = "LPS", name: str = "Landmarks",
                     measurements: Sequence[tuple[str, str, str]] = (),
                     color: Sequence[float] | None = None) -> dict:
    """The JSON document: one point list, plus one Line per ``(name, from, to)`` measurement.

    With review flags, the points that still need review (``Landmarks.open_review_flags``: not
    verified, corrected or added) are the "selected" ones (drawn in ``REVIEW_COLOR``) and say
    ``NEEDS REVIEW`` in their description; the image warning is kept on the point list.
    """
    system = check_coordinate_system(coords)
    pos = landmarks.positions_in(system)
    review = None if landmarks.needs_review is None else landmarks.open_review_flags()
    points = [_control_point(i + 1, n, landmarks.descriptions[i], pos[i], landmarks.status[i],
                             landmarks.confidence[i], None if review is None else bool(review[i]))
              for i, n in enumerate(landmarks.names)]
    fiducial: dict = {"type": "Fiducial", "name": name, "coordinateSystem": system, "coordinateUnits": "mm",
                      "locked": False, "labelFormat": "%N-%d", "controlPoints": points}
    if landmarks.image_warning:
        fiducial[_WARNING_KEY] = landmarks.image_warning
    if color is not None or review is not None:
        shown = [float(c) for c in color] if color is not None else [0.4, 1.0, 1.0]  # Slicer's default colour
        fiducial["display"] = {"color": shown,
                               "selectedColor": REVIEW_COLOR if review is not None else list(shown)}
    markups = [fiducial]
    for meas_name, a, b in measurements:
        ia, ib = landmarks.index_of(a), landmarks.index_of(b)
        markups.append(line_markup(meas_name, pos[ia], pos[ib], system, [landmarks.names[ia], landmarks.names[ib]]))
    return {"@schema": SCHEMA_URL, "markups": markups}


def write_mrk_json(path: str | os.PathLike, landmarks: Landmarks, coords: str = "LPS", name: str = "Landmarks",
                   measurements: Sequence[tuple[str, str, str]] = ()) -> None:
    """Write a ``.mrk.json`` atomically (Slicer's own default coordinate system is LPS)."""
    doc = markups_document(landmarks, coords, name, measurements)
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def write_line_json(path: str | os.PathLike, name: str, a_lps: np.ndarray, b_lps: np.ndarray,
                    endpoint_names: Sequence[str], coords: str = "LPS") -> None:
    """Write one Line markup file (the seed's per-measurement layout)."""
    system = check_coordinate_system(coords)
    a, b = np.asarray(a_lps, float), np.asarray(b_lps, float)
    if system == "RAS":
        a, b = ras_to_lps(a), ras_to_lps(b)
    doc = {"@schema": SCHEMA_URL, "markups": [line_markup(name, a, b, system, endpoint_names)]}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
