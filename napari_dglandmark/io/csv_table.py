"""The project's landmark CSV: one row per landmark (and per image)."""

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
from .landmarks import Landmarks, check_coordinate_system

REQUIRED = ("landmark", "x", "y", "z", "coordinate_system")
OPTIONAL = ("i", "j", "k", "confidence", "needs_review", "status", "image", "model", "model_sha256", "exported_at",
            "image_warning")


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else repr(float(value))


def landmark_rows(landmarks: Landmarks, coords: str = "RAS", geometry: Geometry | None = None,
                  extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    """CSV rows (dicts) for one Landmarks; ``i,j,k`` when the image geometry is given.

    Assessed landmarks (``needs_review`` set) add ``needs_review`` (1/0) and ``image_warning``
    (empty when the image is the kind the model was made for).
    """
    system = check_coordinate_system(coords)
    pos = landmarks.positions_in(system)
    index = geometry.physical_to_index(landmarks.positions) if geometry is not None else None
    rows = []
    for n, name in enumerate(landmarks.names):
        row = {"landmark": name, "x": _fmt(pos[n, 0]), "y": _fmt(pos[n, 1]), "z": _fmt(pos[n, 2]),
               "coordinate_system": system}
        if index is not None:
            row.update(i=_fmt(index[n, 0]), j=_fmt(index[n, 1]), k=_fmt(index[n, 2]))
        row["confidence"] = _fmt(landmarks.confidence[n])
        if landmarks.needs_review is not None:
            row["needs_review"] = "1" if landmarks.needs_review[n] else "0"
        row["status"] = landmarks.status[n]
        if landmarks.needs_review is not None or landmarks.image_warning:
            row["image_warning"] = landmarks.image_warning
        if landmarks.image:
            row["image"] = landmarks.image
        if landmarks.model:
            row["model"] = landmarks.model
        row.update(extra or {})
        rows.append(row)
    return rows


def format_rows(rows: Sequence[dict[str, str]], first: Sequence[str] = ()) -> str:
    """CSV text with a header that holds every column used (``first`` columns first)."""
    order = list(first) + [c for c in REQUIRED + OPTIONAL if c not in first]
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
        g = groups.setdefault(row.get("image", ""), {"names": [], "pos": [], "conf": [], "status": [], "model": "",
                                                     "review": [], "warning": ""})
        g["names"].append(name)
        g["pos"].append(xyz)
        g["conf"].append(confidence)
        g["status"].append(status or "defined")
        g["review"].append(review in ("1", "true", "yes"))
        g["model"] = g["model"] or row.get("model", "")
        g["warning"] = g["warning"] or row.get("image_warning", "")
    if not groups:
        raise DGLandmarkError("CSV holds no landmark rows", src)
    out = {}
    for image, g in groups.items():
        try:
            out[image] = Landmarks(g["names"], np.array(g["pos"]), [], np.array(g["conf"]), g["status"],
                                   image=image or None, model=g["model"] or None,
                                   needs_review=np.array(g["review"]) if "needs_review" in header else None,
                                   image_warning=g["warning"])
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
