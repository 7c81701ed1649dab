"""The QC picture of one detection: axial, coronal and sagittal planes through the landmarks' centre.

The planes are sampled in LPS millimetres (``Volume.physical_to_index``), so any storage order or
obliquity shows upright in scanner space, radiological convention as 3D Slicer shows it (patient
right on the left).
Every landmark is drawn at its projection on each plane: solid within ``NEAR_MM`` of the plane,
a faint ring further away; landmarks that need review are magenta crosses (named when few).
Only the three planes are sampled: no copy of the volume is made.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..io.atomic import atomic_path
from ..io.landmarks import Landmarks
from ..io.volume import Volume

NEAR_MM = 5.0  # a landmark this close to a plane is drawn solid on it
MARGIN_MM = 25.0  # around the landmarks' extent
MAX_PIXELS = 200  # per panel side
OK_COLOR = "#39e639"
FLAG_COLOR = "#ff00ff"
MAX_LABELS = 8  # name the flagged landmarks only when so few are flagged
ZOOM = 1.6  # screen pixels per sampled pixel: sharper markers and letters at a modest file size
GAP = 0.006  # between panels, as a fraction of the picture's width


def _plane_axes(plane: str) -> tuple[int, int, int, int, int]:
    """(column axis, column sign, row axis, row sign, normal axis) in LPS; rows run top to bottom."""
    return {"axial": (0, 1, 1, 1, 2),  # columns R->L, rows A->P
            "coronal": (0, 1, 2, -1, 1),  # columns R->L, rows S->I
            "sagittal": (1, 1, 2, -1, 0)}[plane]  # columns A->P, rows S->I


_CORNERS = {"axial": ("R", "L", "A"), "coronal": ("R", "L", "S"), "sagittal": ("A", "P", "S")}


def _frame(landmarks: Landmarks, volume: Volume) -> tuple[np.ndarray, float, float]:
    """(centre LPS, half-width mm, pixel spacing mm) of the square field of view."""
    pos = landmarks.positions[landmarks.defined]
    if len(pos):
        center = (pos.min(0) + pos.max(0)) / 2
        half = float(np.ptp(pos, axis=0).max()) / 2 + MARGIN_MM
    else:  # nothing detected: the middle of the image
        size = np.asarray(volume.geometry.size, float)
        center = volume.index_to_physical((size - 1) / 2)
        half = 90.0
    half = float(np.clip(half, 40.0, 130.0))
    return center, half, max(1.0, 2 * half / MAX_PIXELS)


def sample_plane(volume: Volume, plane: str, center: np.ndarray, half: float, step: float) -> np.ndarray:
    """The plane through ``center`` (rows, columns), trilinear; NaN outside the image."""
    from scipy.ndimage import map_coordinates

    col_axis, col_sign, row_axis, row_sign, _ = _plane_axes(plane)
    offsets = np.arange(-half, half + 1e-6, step)
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    points = np.repeat(np.asarray(center, float)[None, None], len(offsets), 0).repeat(len(offsets), 1)
    points[..., col_axis] += col_sign * cols
    points[..., row_axis] += row_sign * rows
    index = volume.physical_to_index(points.reshape(-1, 3))  # (i, j, k)
    values = map_coordinates(volume.array, index[:, ::-1].T, order=1, mode="constant", cval=np.nan,
                             output=np.float32)
    size = np.asarray(volume.geometry.size, float)
    outside = np.any((index < -0.5) | (index > size - 0.5), axis=1)
    values[outside] = np.nan
    return values.reshape(rows.shape)


def _window(planes: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([p[np.isfinite(p)] for p in planes] or [np.zeros(1)])
    values = values[values > values.min()] if np.ptp(values) > 0 else values
    if not len(values):
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def render_snapshot(path: str | os.PathLike, volume: Volume, landmarks: Landmarks,
                    labels: Sequence[str] | None = None) -> None:
    """Write the three-plane PNG (atomically). ``labels``: short names per landmark (acronyms)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    center, half, step = _frame(landmarks, volume)
    planes = {name: sample_plane(volume, name, center, half, step) for name in ("axial", "coronal", "sagittal")}
    lo, hi = _window(list(planes.values()))
    flags = landmarks.review_flags()
    labels = list(labels) if labels is not None else list(landmarks.names)
    label_flags = 0 < int(flags.sum()) <= MAX_LABELS
    pixels = next(iter(planes.values())).shape[0]
    fig = Figure(figsize=(3 * pixels * ZOOM / 100, pixels * ZOOM / 100), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    for n, (name, image) in enumerate(planes.items()):
        ax = fig.add_axes((n / 3 + GAP / 2, 0, 1 / 3 - GAP, 1))
        ax.set_axis_off()
        shown = np.where(np.isfinite(image), image, lo)
        ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi, extent=(-half, half, half, -half),
                  interpolation="bilinear")
        col_axis, col_sign, row_axis, row_sign, normal = _plane_axes(name)
        defined = landmarks.defined
        rel = landmarks.positions - center
        cx, cy = col_sign * rel[:, col_axis], row_sign * rel[:, row_axis]
        near = np.abs(rel[:, normal]) <= NEAR_MM
        ok, flagged = defined & ~flags, defined & flags
        ax.scatter(cx[ok & ~near], cy[ok & ~near], s=14, marker="o", facecolors="none", edgecolors=OK_COLOR,
                   linewidths=0.8, alpha=0.5)
        ax.scatter(cx[ok & near], cy[ok & near], s=18, marker="o", c=OK_COLOR, edgecolors="black", linewidths=0.5)
        ax.scatter(cx[flagged & ~near], cy[flagged & ~near], s=14, marker="x", c=FLAG_COLOR, linewidths=0.8,
                   alpha=0.5)
        ax.scatter(cx[flagged & near], cy[flagged & near], s=34, marker="x", c=FLAG_COLOR, linewidths=1.8)
        if label_flags:
            for i in np.flatnonzero(defined & flags & near):
                ax.annotate(labels[i], (cx[i], cy[i]), xytext=(4, 3), textcoords="offset points", fontsize=7,
                            color=FLAG_COLOR)
        left, right, top = _CORNERS[name]
        style = dict(color="#ffd24a", fontsize=8, fontweight="bold")
        ax.text(-half + 2 * step, 0, left, va="center", ha="left", **style)
        ax.text(half - 2 * step, 0, right, va="center", ha="right", **style)
        ax.text(0, -half + 2 * step, top, va="top", ha="center", **style)
        ax.set_xlim(-half, half)
        ax.set_ylim(half, -half)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor="black")
