"""Anatomy of a protocol: reference configuration, robust similarity fits and a shape model.

One Procrustes implementation for everybody: inference uses it for the canonical frame and the
plausibility check, training for warps to real geometry. A shape model is a JSON file beside the
protocol (``protocols/<name>.shape.json``): the reference configuration (LPS mm, template space)
and how far each landmark of real people lies from it after a similarity fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError


@dataclass
class Similarity:
    """``y = scale * rotation @ x + translation`` (LPS mm)."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points, float) @ self.rotation.T + self.translation

    def inverse(self) -> Similarity:
        r = self.rotation.T
        return Similarity(1.0 / self.scale, r, -(r @ self.translation) / self.scale)

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    @property
    def angle_deg(self) -> float:
        """Rotation angle (degrees) of the rotation part."""
        return float(np.degrees(np.arccos(np.clip((np.trace(self.rotation) - 1) / 2, -1, 1))))


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                   allow_scale: bool = True) -> Similarity:
    """Weighted least-squares similarity (Umeyama) mapping ``src`` onto ``dst``; NaN rows are ignored."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float).copy()
    w[np.isnan(src).any(1) | np.isnan(dst).any(1)] = 0
    if (w > 0).sum() < 3:
        raise DGLandmarkError("a similarity fit needs at least 3 landmarks")
    w = w / w.sum()
    s0, d0 = np.nan_to_num(src), np.nan_to_num(dst)
    mu_s, mu_d = w @ s0, w @ d0
    xs, xd = s0 - mu_s, d0 - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var = (w * (xs ** 2).sum(1)).sum()
    scale = float((sig * d).sum() / var) if allow_scale and var > 0 else 1.0
    return Similarity(scale, rot, mu_d - scale * rot @ mu_s)


def robust_similarity(src: np.ndarray, dst: np.ndarray, allow_scale: bool = True,
                      min_threshold_mm: float = 4.0, iterations: int = 8) -> tuple[Similarity, np.ndarray]:
    """Similarity fit that ignores outliers (iteratively reweighted, Tukey weights).

    Returns the transform and the per-landmark residual (mm, NaN for missing landmarks).
    """
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    weights = np.ones(len(src))
    fit = fit_similarity(src, dst, weights, allow_scale)
    for _ in range(iterations):
        res = np.linalg.norm(fit.apply(src) - dst, axis=1)
        ok = np.isfinite(res)
        c = max(min_threshold_mm, 4.685 * 1.4826 * float(np.median(res[ok])))
        weights = np.where(ok, np.clip(1 - (res / c) ** 2, 0, None) ** 2, 0)
        if (weights > 0).sum() < 4:
            break
        fit = fit_similarity(src, dst, weights, allow_scale)
    res = np.linalg.norm(fit.apply(src) - dst, axis=1)
    return fit, res


@dataclass
class ShapeModel:
    """Reference configuration and real-people spread of a protocol's landmarks."""

    names: list[str]
    reference: np.ndarray  # [L, 3] LPS mm (template space)
    spread: np.ndarray  # [L] RMS distance (mm) of real people's landmarks from the aligned reference
    source: str = ""
    head_center: np.ndarray | None = None  # foreground centre of the reference image (LPS mm)

    def fit(self, positions: np.ndarray, allow_scale: bool = True) -> tuple[Similarity, np.ndarray]:
        """Robust similarity from the reference onto ``positions`` and the residual of each landmark."""
        return robust_similarity(self.reference, positions, allow_scale)

    def predict(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each landmark should be given the others (LPS mm) and its residual in units of spread."""
        fit, res = self.fit(positions)
        return fit.apply(self.reference), res / np.maximum(self.spread, 0.5)

    def to_dict(self) -> dict:
        data = {"names": self.names, "reference_lps": np.round(self.reference, 4).tolist(),
                "spread_mm": np.round(self.spread, 4).tolist(), "source": self.source}
        if self.head_center is not None:
            data["head_center_lps"] = np.round(self.head_center, 3).tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ShapeModel:
        head = data.get("head_center_lps")
        return cls(list(data["names"]), np.asarray(data["reference_lps"], float),
                   np.asarray(data["spread_mm"], float), data.get("source", ""),
                   None if head is None else np.asarray(head, float))


def shape_model_path(protocol: str) -> Path:
    return Path(__file__).resolve().parents[1] / "protocols" / f"{protocol}.shape.json"


def load_shape_model(protocol: str | os.PathLike) -> ShapeModel:
    """The shape model shipped beside a protocol (by name) or from a JSON file."""
    path = Path(protocol)
    if not path.suffix:
        path = shape_model_path(str(protocol))
    if not path.exists():
        raise DGLandmarkError(f"no shape model for protocol {protocol!r}", path)
    return ShapeModel.from_dict(json.loads(path.read_text()))
