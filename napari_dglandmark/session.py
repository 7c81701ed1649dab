"""Correction state of one landmark set: status bookkeeping, undo, autosave sidecar and export (Qt-free).

The napari widgets feed every edit of a points layer through :class:`CorrectionSession`; this module
decides what the edit means (moved -> ``corrected``, deleted -> ``missing``, placed where missing ->
``added``), keeps the undo stack, writes the autosave sidecar (in the user's data folder) and the exports.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DGLandmarkError
from .io.atomic import write_text_atomic
from .io.csv_table import LANDMARK_COLUMNS, format_rows, landmark_rows
from .io.landmarks import (
    REVIEWED,
    Landmarks,
    check_coordinate_system,
    distance,
    normalise_name,
    placed_by_after,
)
from .io.markups_json import write_mrk_json
from .io.volume import Geometry, strip_volume_suffix
from .protocols import Protocol

SIDECAR_SUFFIX = ".dglandmark.json"
#: when set, every sidecar goes into this folder (tests, read-only data trees)
SIDECAR_DIR_ENV = "DGLANDMARK_SIDECAR_DIR"
SIDECAR_VERSION = 1
#: the landmark CSV of an export: the one landmark table (``io.csv_table``)
EXPORT_COLUMNS = LANDMARK_COLUMNS
MEASUREMENT_COLUMNS = ("measurement", "value_mm", "from", "to", "status")


def _same_position(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=1e-6))


def apply_statuses(old: Landmarks, new: Landmarks) -> Landmarks:
    """``new`` with statuses from what changed since ``old``.

    Moved -> ``corrected`` (an ``added`` one stays ``added``), gone -> ``missing``, placed where
    it was missing -> ``added``; unchanged landmarks keep their status. A moved landmark keeps the
    model's confidence (what the model thought of its own position); an added one has none (NaN):
    a person placed it. ``placed_by`` becomes ``human`` for both (``io.landmarks.placed_by_after``).
    """
    out = new.copy()
    for i, name in enumerate(out.names):
        defined = bool(out.defined[i])
        try:
            j = old.index_of(name)
        except KeyError:
            out.status[i] = "added" if defined else "missing"
            continue
        out.confidence[i] = old.confidence[j]
        was = bool(old.defined[j])
        if not defined:
            out.status[i] = "missing"
        elif not was:
            out.status[i] = "added"
        elif not _same_position(old.positions[j], out.positions[i]):
            out.status[i] = "added" if old.status[j] == "added" else "corrected"
        else:
            out.status[i] = old.status[j]
    for i, status in enumerate(out.status):
        if status == "added":
            out.confidence[i] = np.nan
    out.placed_by = [placed_by_after(st, by) for st, by in zip(out.status, out.placed_by, strict=True)]
    return out


def _equal(a: Landmarks, b: Landmarks) -> bool:
    if [normalise_name(n) for n in a.names] != [normalise_name(n) for n in b.names] or a.status != b.status:
        return False
    return bool(np.array_equal(a.defined, b.defined)
                and _same_position(a.positions[a.defined], b.positions[b.defined]))


class CorrectionSession:
    """The landmarks of one image and model while a person corrects them; undo and export state."""

    def __init__(self, landmarks: Landmarks, *, image: str | None = None, model: str | None = None,
                 model_sha256: str | None = None, protocol: str | None = None, max_undo: int = 200) -> None:
        self.landmarks = landmarks.copy()
        self.image = image if image is not None else landmarks.image
        self.model = model if model is not None else landmarks.model
        self.model_sha256 = model_sha256
        self.protocol = protocol
        #: the sidecar entry it saves to (None: the model's); a second layer of one image and model has its own
        self.sidecar_key: str | None = None
        self.max_undo = max_undo
        self.unexported = False
        self._undo: list[Landmarks] = []
        self._gesture = False
        self._gesture_pushed = False

    # -- edits -------------------------------------------------------------------------------
    @property
    def edited(self) -> bool:
        """True when a person changed any landmark (a status in ``REVIEWED``, or one deleted)."""
        return any(s in REVIEWED for s in self.landmarks.status) or bool(self._undo)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def begin_gesture(self) -> None:
        """A mouse drag starts: all its steps become one undo entry."""
        self._gesture, self._gesture_pushed = True, False

    def end_gesture(self) -> None:
        self._gesture = self._gesture_pushed = False

    def _push(self) -> None:
        if self._gesture and self._gesture_pushed:
            return
        self._undo.append(self.landmarks.copy())
        del self._undo[: -self.max_undo]
        self._gesture_pushed = self._gesture

    def edit(self, new: Landmarks) -> Landmarks:
        """Take the layer's new landmarks; returns them with statuses set (see :func:`apply_statuses`)."""
        result = apply_statuses(self.landmarks, new)
        result.image, result.model = self.landmarks.image, self.landmarks.model
        if _equal(result, self.landmarks):
            return self.landmarks.copy()
        self._push()
        self.landmarks = result
        self.unexported = True
        return result.copy()

    def set_status(self, name: str, status: str) -> Landmarks:
        """Set one landmark's status (``verified`` = accepted); a missing landmark cannot be accepted."""
        i = self.landmarks.index_of(name)
        if status != "missing" and not self.landmarks.defined[i]:
            raise DGLandmarkError(f"{self.landmarks.names[i]} is missing; place it before accepting it")
        if self.landmarks.status[i] != status:
            self._push()
            self.landmarks.status[i] = status
            self.unexported = True
        return self.landmarks.copy()

    def accept(self, name: str) -> Landmarks:
        return self.set_status(name, "verified")

    def undo(self) -> Landmarks | None:
        """The landmarks before the last edit (now current), or None when there is nothing to undo."""
        if not self._undo:
            return None
        self.landmarks = self._undo.pop()
        self.unexported = True
        return self.landmarks.copy()

    def mark_exported(self) -> None:
        self.unexported = False

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        lms = self.landmarks
        flags = lms.needs_review
        return {
            "model": self.model, "model_sha256": self.model_sha256, "protocol": self.protocol,
            "unexported": self.unexported,
            "saved_at": _now(),
            "landmarks": [
                {"name": n, "position_lps": None if not lms.defined[i] else [float(v) for v in lms.positions[i]],
                 "confidence": None if not np.isfinite(lms.confidence[i]) else float(lms.confidence[i]),
                 "status": lms.status[i], "description": lms.descriptions[i],
                 **({"needs_review": bool(flags[i])} if flags is not None else {})}
                for i, n in enumerate(lms.names)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], image: str | None = None) -> CorrectionSession:
        rows = data.get("landmarks") or []
        try:
            pos = np.array([r["position_lps"] if r.get("position_lps") is not None else [np.nan] * 3
                            for r in rows], dtype=float).reshape(-1, 3)
            lms = Landmarks([r["name"] for r in rows], pos, [str(r.get("description") or "") for r in rows],
                            np.array([np.nan if r.get("confidence") is None else float(r["confidence"])
                                      for r in rows]),
                            [str(r.get("status") or "defined") for r in rows], image=image, model=data.get("model"))
            flags = (np.array([bool(r["needs_review"]) for r in rows])
                     if rows and all("needs_review" in r for r in rows) else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise DGLandmarkError(f"malformed sidecar entry ({exc.__class__.__name__})") from None
        out = cls(lms, image=image, model=data.get("model"), model_sha256=data.get("model_sha256"),
                  protocol=data.get("protocol"))
        out.unexported = bool(data.get("unexported", False))
        if flags is not None:
            out.landmarks.needs_review = flags
        return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def user_sidecar_dir() -> Path:
    """The per-user folder for sidecars (``$DGLANDMARK_SIDECAR_DIR`` when set)."""
    env = os.environ.get(SIDECAR_DIR_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-dglandmark", appauthor=False)) / "sidecars"


def sidecar_path(image: str | os.PathLike) -> Path:
    """``<image stem>-<hash of its path>.dglandmark.json`` in the per-user data folder.

    Never beside the image: data folders (BIDS datasets, read-only archives) stay untouched.
    """
    src = Path(image)
    stem = strip_volume_suffix(src.name.rstrip("/")) or "image"
    digest = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:10]
    return user_sidecar_dir() / f"{stem}-{digest}{SIDECAR_SUFFIX}"


def legacy_sidecar_path(image: str | os.PathLike) -> Path:
    """Where versions before 0.2 put the sidecar (beside the image); still read, never written."""
    src = Path(image)
    return src.parent / f"{strip_volume_suffix(src.name.rstrip('/')) or 'image'}{SIDECAR_SUFFIX}"


def _entry_key(model: str | None) -> str:
    return model or ""


def read_sidecar(image: str | os.PathLike) -> dict[str, Any]:
    """The sidecar's entries ``{model: entry}``; empty when there is none."""
    path = sidecar_path(image)
    if not path.exists():
        path = legacy_sidecar_path(image)
        if os.environ.get(SIDECAR_DIR_ENV) or not path.is_file():
            return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DGLandmarkError(f"unreadable sidecar ({exc.__class__.__name__})", path) from None
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise DGLandmarkError("not a napari-dglandmark sidecar (no 'entries')", path)
    return entries


def load_sidecar(image: str | os.PathLike, model: str | None = None) -> CorrectionSession | None:
    """The saved session of ``image`` (and ``model``; any model when None), or None."""
    entries = read_sidecar(image)
    if model is not None:
        entry = entries.get(_entry_key(model))
    else:
        entry = next(iter(entries.values()), None)
    if not entry:
        return None
    return CorrectionSession.from_dict(entry, image=str(image))


def save_sidecar(session: CorrectionSession) -> Path:
    """Write the session into its image's sidecar (atomically; other models' entries kept)."""
    if not session.image:
        raise DGLandmarkError("these landmarks have no image file; nothing to save a sidecar beside")
    path = sidecar_path(session.image)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        entries = read_sidecar(session.image)
    except DGLandmarkError:
        entries = {}  # a damaged sidecar is replaced rather than blocking every save
    entries[session.sidecar_key or _entry_key(session.model)] = session.to_dict()
    doc = {"format": "napari-dglandmark sidecar", "version": SIDECAR_VERSION, "image": str(session.image),
           "entries": entries}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path


# -- export ----------------------------------------------------------------------------------
def export_rows(landmarks: Landmarks, coords: str = "RAS", geometry: Geometry | None = None,
                model_sha256: str | None = None, exported_at: str | None = None) -> list[dict[str, str]]:
    """Landmark CSV rows with every column of :data:`EXPORT_COLUMNS` (blank when unknown)."""
    extra = {"image": landmarks.image or "", "model": landmarks.model or "", "model_sha256": model_sha256 or "",
             "exported_at": exported_at or _now()}
    return landmark_rows(landmarks, coords, geometry, extra)


def export_landmarks_csv(path: str | os.PathLike, landmarks: Landmarks, coords: str = "RAS",
                         geometry: Geometry | None = None, model_sha256: str | None = None,
                         exported_at: str | None = None) -> Path:
    """Write the landmark CSV (atomically)."""
    write_text_atomic(path, format_rows(export_rows(landmarks, coords, geometry, model_sha256, exported_at)))
    return Path(path)


def _measurement_status(landmarks: Landmarks, a: str, b: str, value: float) -> str:
    if not np.isfinite(value):
        return "missing"
    statuses = {landmarks.status[landmarks.index_of(a)], landmarks.status[landmarks.index_of(b)]}
    if statuses & {"corrected", "added"}:
        return "corrected"
    if statuses == {"verified"}:
        return "verified"
    return "predicted" if "predicted" in statuses else "defined"


def measurement_table(landmarks: Landmarks, protocol: Protocol | None) -> list[dict[str, str]]:
    """One row per protocol measurement whose endpoints are in ``landmarks``."""
    if protocol is None:
        return []
    rows = []
    for m in protocol.measurements:
        try:
            value = distance(landmarks, m.a, m.b)
        except KeyError:
            continue
        rows.append({"measurement": m.name, "value_mm": "" if not np.isfinite(value) else repr(value),
                     "from": m.a, "to": m.b, "status": _measurement_status(landmarks, m.a, m.b, value)})
    return rows


def export_measurements_csv(path: str | os.PathLike, landmarks: Landmarks, protocol: Protocol | None) -> Path:
    """Write ``measurement,value_mm,from,to,status`` (atomically)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MEASUREMENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(measurement_table(landmarks, protocol))
    text = out.getvalue()
    write_text_atomic(path, text)
    return Path(path)


def measurement_triples(landmarks: Landmarks, protocol: Protocol | None) -> list[tuple[str, str, str]]:
    """The protocol's measurements whose endpoints both exist in ``landmarks`` (for Slicer lines)."""
    if protocol is None:
        return []
    known = {normalise_name(n) for n in landmarks.names}
    return [t for t in protocol.measurement_triples()
            if normalise_name(t[1]) in known and normalise_name(t[2]) in known]


def export_paths(base: str | os.PathLike) -> dict[str, Path]:
    """The three files of one export from the landmark CSV's path (or any stem)."""
    p = Path(base)
    name = p.name
    for suffix in (".mrk.json", ".csv", ".fcsv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return {"landmarks": p.with_name(f"{name}.csv"), "measurements": p.with_name(f"{name}_measurements.csv"),
            "markups": p.with_name(f"{name}.mrk.json")}


def export_all(base: str | os.PathLike, landmarks: Landmarks, protocol: Protocol | None = None,
               coords: str = "RAS", geometry: Geometry | None = None, model_sha256: str | None = None,
               exported_at: str | None = None) -> list[Path]:
    """Landmark CSV, measurements CSV and Slicer ``.mrk.json``, each written atomically."""
    system = check_coordinate_system(coords)
    paths = export_paths(base)
    stamp = exported_at or _now()
    export_landmarks_csv(paths["landmarks"], landmarks, system, geometry, model_sha256, stamp)
    export_measurements_csv(paths["measurements"], landmarks, protocol)
    write_mrk_json(paths["markups"], landmarks, system, name=Path(paths["markups"]).name[: -len(".mrk.json")],
                   measurements=measurement_triples(landmarks, protocol))
    return list(paths.values())


def next_name(names: Sequence[str], current: str | None, step: int = 1) -> str | None:
    """The landmark ``step`` rows after ``current`` (wrapping); the first one when ``current`` is unknown."""
    if not names:
        return None
    keys = [normalise_name(n) for n in names]
    if current is None or normalise_name(current) not in keys:
        return names[0] if step >= 0 else names[-1]
    return names[(keys.index(normalise_name(current)) + step) % len(names)]
