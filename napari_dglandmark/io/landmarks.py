"""The Landmarks object: named points in physical LPS mm, with status, confidence and review state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ..errors import DGLandmarkError
from .geometry import lps_to_ras, ras_to_lps

#: confidence below which a landmark without a quality review counts as needing review
LOW_CONFIDENCE = 0.5



class Status(StrEnum):
    """What happened to a landmark; a member equals its string (``Status.VERIFIED == "verified"``)."""

    DEFINED = "defined"  # a position from a file that carries no review state (plain annotation)
    PREDICTED = "predicted"  # placed by the model, nobody has looked at it yet
    CORRECTED = "corrected"  # a person moved the model's position
    ADDED = "added"  # a person placed it where there was none
    VERIFIED = "verified"  # a person accepted the model's position
    MISSING = "missing"  # keeps its row but has no position


#: statuses a landmark can have
STATUSES = tuple(Status)
#: statuses that mean a person looked at (or placed) the landmark: their positions are truth
REVIEWED = (Status.VERIFIED, Status.CORRECTED, Status.ADDED)
#: statuses written by the model or the review workflow: their presence means "this file went through review"
REVIEW_STATUSES = (Status.PREDICTED, *REVIEWED)
#: statuses whose position a person put there (whoever placed it before)
PLACED_BY_HUMAN = (Status.CORRECTED, Status.ADDED)
#: statuses whose position the model put there
PLACED_BY_MODEL = (Status.PREDICTED, Status.VERIFIED)
#: who placed a landmark's current position
PLACED_BY = ("model", "human")


def normalise_name(name: str) -> str:
    """Key under which landmark names are compared (case- and space-insensitive)."""
    return " ".join(str(name).split()).casefold()


@dataclass
class Landmarks:
    """Named landmarks. Positions are LPS mm, NaN where a landmark is missing.

    Identity is the name, never the row order.

    Quality (``model.quality``): ``needs_review`` (one bool per landmark, None when nobody assessed
    it), ``placed_by`` (``"model"`` or ``"human"`` per landmark) and ``image_warning`` (why the image
    is not the kind the model was made for; ``""`` when it is).
    """

    names: list[str]
    positions: np.ndarray
    descriptions: list[str] = field(default_factory=list)
    confidence: np.ndarray | None = None
    status: list[str] = field(default_factory=list)
    image: str | None = None
    model: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)  # as stored in a file, mm
    needs_review: np.ndarray | None = None
    placed_by: list[str] = field(default_factory=list)
    image_warning: str = ""

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        n = len(self.names)
        self.positions = np.asarray(self.positions, dtype=float).reshape(n, 3)
        if not self.descriptions:
            self.descriptions = [""] * n
        if self.confidence is None:
            self.confidence = np.full(n, np.nan)
        self.confidence = np.asarray(self.confidence, dtype=float).reshape(n)
        if not self.status:
            self.status = ["missing" if np.isnan(p).any() else "defined" for p in self.positions]
        if not self.placed_by:
            self.placed_by = [default_placed_by(s) for s in self.status]
        if not (len(self.descriptions) == len(self.status) == len(self.placed_by) == n):
            raise ValueError("names, descriptions, status and placed_by must have the same length")
        if self.needs_review is not None:
            self.needs_review = np.asarray(self.needs_review, dtype=bool).reshape(n)
        self.image_warning = str(self.image_warning or "")
        keys = [normalise_name(x) for x in self.names]
        dupes = sorted({x for x in self.names if keys.count(normalise_name(x)) > 1})
        if dupes:
            raise DGLandmarkError(f"duplicate landmark names: {', '.join(dupes)}")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_ras(cls, names: Sequence[str], ras: np.ndarray, **kwargs) -> Landmarks:
        """Build from RAS positions (what Slicer shows)."""
        return cls(list(names), ras_to_lps(np.asarray(ras, dtype=float).reshape(-1, 3)), **kwargs)

    def positions_in(self, coords: str) -> np.ndarray:
        """Positions in ``"LPS"`` or ``"RAS"``."""
        system = check_coordinate_system(coords)
        return self.positions.copy() if system == "LPS" else lps_to_ras(self.positions)

    def index_of(self, name: str) -> int:
        """Row of a landmark, matched case-insensitively; KeyError when absent."""
        key = normalise_name(name)
        for i, other in enumerate(self.names):
            if normalise_name(other) == key:
                return i
        raise KeyError(name)

    def get(self, name: str) -> np.ndarray:
        """LPS position of one landmark (NaN when missing)."""
        return self.positions[self.index_of(name)]

    @property
    def defined(self) -> np.ndarray:
        """Boolean mask of landmarks that have a position."""
        return ~np.isnan(self.positions).any(axis=1)

    def reordered(self, names: Iterable[str], strict: bool = True) -> Landmarks:
        """Landmarks in the order of ``names``; absent ones become ``missing`` unless ``strict``."""
        names = list(names)
        pos, desc, conf, status, review, by = [], [], [], [], [], []
        for name in names:
            try:
                i = self.index_of(name)
            except KeyError:
                if strict:
                    raise DGLandmarkError(f"landmark {name!r} is not in the file") from None
                pos.append([np.nan] * 3)
                desc.append("")
                conf.append(np.nan)
                status.append("missing")
                review.append(False)
                by.append("human")
                continue
            pos.append(self.positions[i])
            desc.append(self.descriptions[i])
            conf.append(self.confidence[i])
            status.append(self.status[i])
            review.append(bool(self.needs_review[i]) if self.needs_review is not None else False)
            by.append(self.placed_by[i])
        return Landmarks(names, np.array(pos).reshape(-1, 3), desc, np.array(conf), status,
                         self.image, self.model, dict(self.measurements),
                         np.array(review, dtype=bool) if self.needs_review is not None else None, by,
                         self.image_warning)

    def review_flags(self) -> np.ndarray:
        """Per row: needs review? ``needs_review`` when the quality review set it, else a finite
        confidence below :data:`LOW_CONFIDENCE` (files and models without the review)."""
        if self.needs_review is not None:
            return self.needs_review.copy()
        conf = np.asarray(self.confidence, dtype=float)
        return np.isfinite(conf) & (conf < LOW_CONFIDENCE)

    def open_review_flags(self) -> np.ndarray:
        """Per row: still needs review, i.e. :meth:`review_flags` unless a person reviewed it
        (:data:`REVIEWED`). What every file writes as ``needs_review``: reviewed means reviewed."""
        return self.review_flags() & ~np.array([s in REVIEWED for s in self.status], dtype=bool).reshape(len(self))

    def copy(self) -> Landmarks:
        return Landmarks(list(self.names), self.positions.copy(), list(self.descriptions),
                         self.confidence.copy(), list(self.status), self.image, self.model,
                         dict(self.measurements),
                         None if self.needs_review is None else self.needs_review.copy(),
                         list(self.placed_by), self.image_warning)


def check_coordinate_system(coords: str) -> str:
    """Upper-case ``coords`` and check it is LPS or RAS."""
    system = str(coords).upper()
    if system not in ("LPS", "RAS"):
        raise DGLandmarkError(f"unknown coordinate system {coords!r}; use RAS or LPS")
    return system


def distance(landmarks: Landmarks, a: str, b: str) -> float:
    """Euclidean distance in mm between two named landmarks; NaN if either is missing."""
    return float(np.linalg.norm(landmarks.get(a) - landmarks.get(b)))


def default_placed_by(status: str) -> str:
    """Who placed a position, from its status alone (files without a ``placed_by``)."""
    return "model" if status in PLACED_BY_MODEL else "human"


def placed_by_after(status: str, before: str) -> str:
    """Who placed a position now: ``human`` once a person moved or placed it, else ``before``."""
    return "human" if status in PLACED_BY_HUMAN else before


def placed_by(landmarks: Landmarks) -> list[str]:
    """Per row, who placed the current position (``model`` / ``human``); ``""`` when it has none."""
    return [placed_by_after(status, before) if landmarks.defined[i] else ""
            for i, (status, before) in enumerate(zip(landmarks.status, landmarks.placed_by, strict=True))]


def is_reviewed_file(landmarks: Landmarks) -> bool:
    """True when the landmarks carry review statuses (a detection that a person went through)."""
    return any(s in REVIEW_STATUSES for s in landmarks.status)


def reviewed(landmarks: Landmarks) -> Landmarks:
    """The landmarks that count as truth: with review statuses only verified/corrected/added ones
    (the others become missing); without statuses (a plain annotation file) every defined one."""
    out = landmarks.copy()
    if is_reviewed_file(landmarks):
        keep = np.array([s in REVIEWED for s in landmarks.status], dtype=bool)
        out.positions[~keep] = np.nan
        out.status = [s if k else Status.MISSING.value for s, k in zip(landmarks.status, keep, strict=True)]
    return out


def count_reviewed(landmarks: Landmarks) -> int:
    """How many landmarks of ``landmarks`` count as truth (see :func:`reviewed`)."""
    return int(reviewed(landmarks).defined.sum())
