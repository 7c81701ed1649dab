"""The project's landmark CSV: one row per landmark (and per image), one schema for every writer.

:data:`LANDMARK_COLUMNS` is the table the CLI, the napari export and the 3D Slicer module all write
(README, "The landmark table"): every column, in this order, blank when unknown; booleans are 1/0.
The reader needs only :data:`REQUIRED` (and accepts ``true``/``false``/``yes``/``no`` too).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError
from .atomic import write_text_atomic
from .geometry import Geometry, ras_to_lps
from .landmarks import PLACED_BY, Landmarks, check_coordinate_system, default_placed_by, placed_by

#: the landmark table, in order: what every writer emits
LANDMARK_COLUMNS = ("landmark", "x", "y", "z", "coordinate_system", "i", "j", "k", "confidence", "needs_review",
                    "status", "placed_by", "image", "model", "model_sha256", "exported_at", "image_warning")
#: what the reader needs (``coordinate_system`` defaults to RAS when absent)
REQUIRED = ("landmark", "x", "y", "z", "coordinate_system")
OPTIONAL = tuple(c for c in LANDMARK_COLUMNS if c not in REQUIRED)


def flag(value: bool) -> str:
    """A boolean as the table writes it."""
    return "1" if value else "0"


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else repr(float(value))


def landmark_rows(landmarks: Landmarks, coords: str = "RAS", geometry: Geometry | None = None,
                  extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Rows (dicts) of :data:`LANDMARK_COLUMNS` for one Landmarks, blank where unknown (``i,j,k``
    without the image geometry); ``extra`` fills or adds columns (``image``, ``model_sha256``, ...).

    ``needs_review`` (1/0) is :meth:`Landmarks.open_review_flags`: a landmark a person verified,
    corrected or added never needs review; blank when nothing assessed the landmarks (no review
    flags and no confidence: a plain annotation file).
    """
    system = check_coordinate_system(coords)
    pos = landmarks.positions_in(system)
    index = geometry.physical_to_index(landmarks.positions) if geometry is not None else None
    assessed = landmarks.needs_review is not None or bool(np.isfinite(landmarks.confidence).any())
    review = landmarks.open_review_flags()
    who = placed_by(landmarks)
    rows = []
    for n, name in enumerate(landmarks.names):
        row = dict.fromkeys(LANDMARK_COLUMNS, "")
        row.update(landmark=name, x=_fmt(pos[n, 0]), y=_fmt(pos[n, 1]), z=_fmt(pos[n, 2]), coordinate_system=system,
                   confidence=_fmt(landmarks.confidence[n]), status=landmarks.status[n], placed_by=who[n],
                   image_warning=landmarks.image_warning, image=landmarks.image or "", model=landmarks.model or "")
        if index is not None:
            row.update(i=_fmt(index[n, 0]), j=_fmt(index[n, 1]), k=_fmt(index[n, 2]))
        if assessed:
            row["needs_review"] = flag(bool(review[n]))
        row.update(extra or {})
        rows.append(row)
    return rows


def format_rows(rows: Sequence[dict[str, str]], first: Sequence[str] = LANDMARK_COLUMNS) -> str:
    """CSV text with a header that holds every column used (``first`` columns first, then the
    landmark table's, then any others by name)."""
    order = list(first) + [c for c in LANDMARK_COLUMNS if c not in first]
    used = [c for c in order if any(c in r for r in rows)]
    used += sorted({c for r in rows for c in r} - set(used))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=used, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(path: str | os.PathLike, landmarks: Landmarks, coords: str = "RAS",
              geometry: Geometry | None = None, extra: dict[str, str] | None = None) -> None:
    """Write one Landmarks as CSV atomically."""
    write_text_atomic(path, format_rows(landmark_rows(landmarks, coords, geometry, extra)))


def read_csv_table(path: str | os.PathLike) -> dict[str, Landmarks]:
    """Read a landmark CSV; returns ``{image: Landmarks}`` (key ``""`` when there is no image column)."""
    src = Path(path)
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DGLandmarkError(f"cannot read CSV: {exc.__class__.__name__}", src) from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("landmark", "x", "y", "z") if c not in header]
    if missing:
        raise DGLandmarkError(f"CSV header lacks column(s) {', '.join(missing)} "
                              "(expected landmark,x,y,z,coordinate_system)", src)
    groups: dict[str, dict[str, list]] = {}
    for number, raw in enumerate(reader, 2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            raise DGLandmarkError(f"line {number}: more fields than header columns", src)
        name = row.get("landmark", "")
        if not name:
            raise DGLandmarkError(f"line {number}: empty landmark name", src)
        system = (row.get("coordinate_system") or "RAS").upper()
        if system not in ("RAS", "LPS"):
            raise DGLandmarkError(f"line {number}: unknown coordinate_system {system!r}", src)
        status = row.get("status") or ""
        try:
            if all(row.get(c, "") == "" for c in "xyz"):
                xyz = np.full(3, np.nan)
                status = status or "missing"
            else:
                xyz = np.array([float(row[c]) for c in "xyz"])
                if not np.all(np.isfinite(xyz)):
                    raise ValueError
            confidence = float(row["confidence"]) if row.get("confidence") else np.nan
        except (ValueError, KeyError):
            raise DGLandmarkError(f"line {number}: position or confidence is not a finite number", src) from None
        if system == "RAS":
            xyz = ras_to_lps(xyz)
        review = row.get("needs_review", "").casefold()
        if review not in ("", "1", "0", "true", "false", "yes", "no"):
            raise DGLandmarkError(f"line {number}: needs_review must be 1 or 0, not {row['needs_review']!r}", src)
        who = row.get("placed_by", "")
        if who not in ("", *PLACED_BY):
            raise DGLandmarkError(f"line {number}: placed_by must be model or human, not {who!r}", src)
        g = groups.setdefault(row.get("image", ""), {"names": [], "pos": [], "conf": [], "status": [], "model": "",
                                                     "review": [], "assessed": False, "by": [], "warning": ""})
        g["names"].append(name)
        g["pos"].append(xyz)
        g["conf"].append(confidence)
        g["status"].append(status or "defined")
        g["review"].append(review in ("1", "true", "yes"))
        g["assessed"] = g["assessed"] or review != ""
        g["by"].append(who or default_placed_by(status or "defined"))
        g["model"] = g["model"] or row.get("model", "")
        g["warning"] = g["warning"] or row.get("image_warning", "")
    if not groups:
        raise DGLandmarkError("CSV holds no landmark rows", src)
    out = {}
    for image, g in groups.items():
        try:
            out[image] = Landmarks(g["names"], np.array(g["pos"]), [], np.array(g["conf"]), g["status"],
                                   image=image or None, model=g["model"] or None,
                                   needs_review=np.array(g["review"]) if g["assessed"] else None,
                                   placed_by=g["by"], image_warning=g["warning"])
        except DGLandmarkError as exc:
            raise DGLandmarkError(f"{exc} (image {image!r})" if image else str(exc), src) from None
    return out


def read_csv(path: str | os.PathLike, image: str | None = None) -> Landmarks:
    """Read the landmarks of one image from a CSV (the only one, or the one named ``image``)."""
    table = read_csv_table(path)
    if image is not None:
        for key, value in table.items():
            if key == image or Path(key).name == Path(image).name:
                return value
        raise DGLandmarkError(f"no rows for image {image!r}", path)
    if len(table) > 1:
        raise DGLandmarkError(f"holds landmarks of {len(table)} images; name one", path)
    return next(iter(table.values()))
