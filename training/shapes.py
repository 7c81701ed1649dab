"""Real people's landmark geometry (shared ``afids-shapes``) and thin-plate-spline warps to it.

Each subject's expert AFIDs are aligned to the template with the core's robust similarity fit
(``model.shape``); what remains is that person's anatomy. A training case warps the template
image so its landmarks land exactly on that anatomy (an interpolating TPS, truth moves exactly).
Subjects are split once, deterministically, into training and held-out sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.model.shape import ShapeModel, fit_similarity, robust_similarity

HELD_OUT_EVERY = 6  # every 6th subject of each cohort (sorted) is never used in training


@dataclass
class Subject:
    name: str  # e.g. "hcp/sub-103111"
    positions: np.ndarray  # [32, 3] LPS mm in the subject's own scanner space (AFID order)


def read_subjects(root: Path, names: list[str]) -> list[Subject]:
    """Ground-truth AFIDs of every subject under ``root`` (afids-shapes), rows matched by the AFID
    number in the fcsv ``label`` column (names differ between cohorts, e.g. OASIS "splenium")."""
    subjects = []
    for cohort in ("hcp", "oasis"):
        for path in sorted((root / cohort / "afids_groundtruth").glob("sub-*/anat/*_afids.fcsv")):
            subjects.append(Subject(f"{cohort}/{path.parts[-3]}", _positions_by_label(path, len(names))))
    return subjects


def _positions_by_label(path: Path, count: int) -> np.ndarray:
    """LPS positions of AFID 1..count from a Slicer fcsv (RAS, ``# columns`` header names the fields)."""
    pos = np.full((count, 3), np.nan)
    columns = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc"]
    system = "RAS"
    for line in path.read_text().splitlines():
        if line.startswith("# columns"):
            columns = [c.strip() for c in line.split("=", 1)[1].split(",")]
        elif line.startswith("# CoordinateSystem"):
            value = line.split("=", 1)[1].strip()
            system = "LPS" if value in ("1", "LPS") else "RAS"
        elif line.strip() and not line.startswith("#"):
            row = dict(zip(columns, line.split(","), strict=False))
            try:
                label = int(float(row["label"]))
            except (KeyError, ValueError):
                continue
            if 1 <= label <= count:
                xyz = np.array([float(row["x"]), float(row["y"]), float(row["z"])])
                pos[label - 1] = xyz * ([-1, -1, 1] if system == "RAS" else 1)
    return pos


def split_subjects(subjects: list[Subject]) -> tuple[list[Subject], list[Subject]]:
    """(training, held-out): every HELD_OUT_EVERY-th subject per cohort is held out."""
    train, held = [], []
    for cohort in ("hcp", "oasis"):
        members = [s for s in subjects if s.name.startswith(cohort + "/")]
        for k, s in enumerate(members):
            (held if k % HELD_OUT_EVERY == 0 else train).append(s)
    return train, held


def to_template_frame(subject: Subject, reference: np.ndarray, keep_size: bool = True) -> np.ndarray:
    """The subject's landmarks moved onto the template by a robust similarity (pose removed).

    With ``keep_size`` the subject keeps its own brain size (rigid alignment after the fit).
    """
    fit, _ = robust_similarity(subject.positions, reference, allow_scale=True)
    if keep_size:
        rigid = fit_similarity(subject.positions, fit.apply(subject.positions), allow_scale=False)
        aligned = rigid.apply(subject.positions)
        return aligned - np.nanmean(aligned, 0) + np.nanmean(fit.apply(subject.positions), 0)
    return fit.apply(subject.positions)


def build_shape_model(names: list[str], reference: np.ndarray, subjects: list[Subject], source: str) -> ShapeModel:
    """Per-landmark RMS residual of real people after a similarity fit of the reference."""
    residuals = []
    for s in subjects:
        fit, res = robust_similarity(reference, s.positions)
        residuals.append(res)
    spread = np.sqrt(np.nanmean(np.square(residuals), axis=0))
    return ShapeModel(list(names), np.asarray(reference, float), spread, source)


class ThinPlateSpline:
    """Interpolating 3D TPS (kernel r) with ``f(src_k) = dst_k`` exactly."""

    def __init__(self, src: np.ndarray, dst: np.ndarray) -> None:
        ok = ~(np.isnan(src).any(1) | np.isnan(dst).any(1))
        self.src = np.asarray(src, float)[ok]
        n = len(self.src)
        k = np.linalg.norm(self.src[:, None] - self.src[None], axis=-1)
        p = np.hstack([np.ones((n, 1)), self.src])
        a = np.zeros((n + 4, n + 4))
        a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
        b = np.zeros((n + 4, 3))
        b[:n] = np.asarray(dst, float)[ok]
        sol = np.linalg.solve(a, b)
        self.w = torch.as_tensor(sol[:n], dtype=torch.float32)
        self.affine = torch.as_tensor(sol[n:], dtype=torch.float32)
        self.ctrl = torch.as_tensor(self.src, dtype=torch.float32)

    def __call__(self, points: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Map points [..., 3] (float32 tensor or array)."""
        pts = torch.as_tensor(points, dtype=torch.float32)
        flat = pts.reshape(-1, 3)
        out = torch.empty_like(flat)
        for a in range(0, len(flat), 500_000):  # chunks keep the distance matrix small
            chunk = flat[a:a + 500_000]
            out[a:a + 500_000] = torch.cdist(chunk, self.ctrl) @ self.w + self.affine[0] + chunk @ self.affine[1:]
        return out.reshape(pts.shape)


def blend_shape(reference: np.ndarray, subject_shape: np.ndarray, amount: float) -> np.ndarray:
    """A configuration between the reference (0) and the subject (1); > 1 exaggerates."""
    shape = np.where(np.isnan(subject_shape), reference, subject_shape)
    return reference + amount * (shape - reference)


def _anchor_directions() -> np.ndarray:
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) / np.sqrt(3)
    return np.vstack([corners, np.eye(3), -np.eye(3)])


def landmark_warp(target: np.ndarray, source: np.ndarray, margin_mm: float = 110.0) -> ThinPlateSpline:
    """TPS from a landmark configuration ``target`` to ``source`` (both LPS mm; NaN rows ignored).

    Far from the landmarks the map is the similarity between the two configurations (anchor
    points ``margin_mm`` out), so the skull and scalp follow the brain's size without folding.
    """
    ok = ~(np.isnan(target).any(1) | np.isnan(source).any(1))
    sim = fit_similarity(target[ok], source[ok])
    anchors = target[ok].mean(0) + margin_mm * _anchor_directions()
    return ThinPlateSpline(np.vstack([target[ok], anchors]), np.vstack([source[ok], sim.apply(anchors)]))
