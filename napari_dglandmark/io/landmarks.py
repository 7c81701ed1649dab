"""The Landmarks object: named points in physical LPS mm, with status, confidence and review state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DGLandmarkError
from .geometry import lps_to_ras, ras_to_lps

#: confidence below which a landmark without a quality review counts as needing review
LOW_CONFIDENCE = 0.5

#: statuses a landmark can have; ``missing`` keeps its row but has no position
STATUSES = ("defined", "predicted", "corrected", "added", "verified", "missing")
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
            self.placed_by = ["model" if s in ("predicted", "verified") else "human" for s in self.status]
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
