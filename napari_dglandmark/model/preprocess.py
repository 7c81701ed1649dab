"""Intensity normalisation and foreground centring, as stored in a model's metadata."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DGLandmarkError
from ..io.geometry import Volume

if TYPE_CHECKING:
    import torch

DEFAULT_NORMALISATION = {"kind": "percentile", "low": 0.5, "high": 99.5}


# Floors below which an image cannot hold the anatomy of any protocol. They are deliberately loose
# (an adult head is >= ~100 mm along every axis, a fetal brain ~50 mm; test phantoms are ~25 mm):
# they refuse garbage (a 2x2x2 image, a header in the wrong unit), not unusual scans.
MIN_VOXELS_PER_AXIS = 8
MIN_FIELD_OF_VIEW_MM = 20.0
MAX_VOXEL_SIZE_MM = 15.0  # thick-slice clinical scans go to ~10 mm


def check_voxels(volume: Volume) -> None:
    """Refuse volumes that no model can read (all NaN, constant, too small, implausible voxel size).

    NaN / infinite voxels (masked pipelines write them outside the head) are background: a
    one-line warning, and ``normalise`` maps them to the low end of the window.
    """
    arr = volume.array
    where = volume.path or "image"
    if arr.size == 0:
        raise DGLandmarkError("image is empty", where)
    bad = 0
    values = arr
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        bad = int(arr.size - np.count_nonzero(finite))
        if bad == arr.size:
            raise DGLandmarkError("every voxel is NaN or infinite", where)
        values = arr[finite] if bad else arr
    if float(values.max()) == float(values.min()):
        rest = f", apart from {bad} NaN or infinite" if bad else ""
        raise DGLandmarkError(f"image is constant (every voxel is {float(values.min()):g}{rest})", where)
    size = volume.geometry.size
    spacing = np.asarray(volume.spacing, dtype=float)
    fov = np.asarray(size, dtype=float) * spacing
    shown = " x ".join(f"{v:g}" for v in fov)
    if min(size) < MIN_VOXELS_PER_AXIS or fov.min() < MIN_FIELD_OF_VIEW_MM:
        raise DGLandmarkError(
            f"image is smaller than any protocol's anatomy: {' x '.join(map(str, size))} voxels covering {shown} mm "
            f"(need >= {MIN_VOXELS_PER_AXIS} voxels and >= {MIN_FIELD_OF_VIEW_MM:g} mm along each axis)", where)
    if spacing.max() > MAX_VOXEL_SIZE_MM:
        raise DGLandmarkError(
            f"implausible voxel size {' x '.join(f'{v:g}' for v in spacing)} mm for landmark detection "
            f"(at most {MAX_VOXEL_SIZE_MM:g} mm; is the header in the wrong unit?)", where)
    if bad:
        warnings.warn(f"{where}: {bad} NaN or infinite voxels treated as background", stacklevel=2)


HISTOGRAM_BINS = 1 << 20  # integer-valued samples spanning fewer values get their percentiles by counting
EXACT_FLOAT32 = 1 << 24  # integers float32 holds exactly


def _sample(arr: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    flat = arr.reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step].astype(np.float32)


def percentiles(values: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """``np.percentile(values, q)`` (linear method) of float32 ``values``, the same numbers; integer-valued
    samples (most MRI) by counting instead of partial sorting, several times faster."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.size == 0:
        return np.percentile(flat, q)
    low, high = float(flat.min()), float(flat.max())
    if not (-EXACT_FLOAT32 < low and high < EXACT_FLOAT32 and high - low < HISTOGRAM_BINS
            and np.array_equal(flat, np.rint(flat))):  # NaN and infinities fail here too
        return np.percentile(flat, q)
    shifted = flat.astype(np.intp)
    shifted -= int(low)
    counts = np.cumsum(np.bincount(shifted))
    virtual = (flat.size - 1) * (np.asarray(q, float) / 100.0)  # as numpy's "linear" method
    previous = np.floor(virtual)
    following = np.minimum(previous + 1, flat.size - 1)
    order = np.searchsorted(counts, np.stack([previous, following]), side="right") + int(low)  # order statistics
    a, b = order.astype(np.float32)
    gamma = virtual - previous
    diff = b - a  # numpy's _lerp: the same dtypes and order of operations
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def intensity_window(arr: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Percentile window (computed on a strided subsample: fast, and stable to ~0.1 %)."""
    lo, hi = percentiles(_sample(arr), [low, high])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    return float(lo), float(hi)


def normalise_array(arr: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """Window to the stored percentiles and scale to [0, 1]: a new float32 array."""
    s = {**DEFAULT_NORMALISATION, **(settings or {})}
    if s["kind"] != "percentile":
        raise DGLandmarkError(f"unknown intensity normalisation {s['kind']!r}")
    data = np.asarray(arr)
    finite = np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else None
    if finite is not None and not finite.all():  # NaN / Inf are background: the window's low end
        lo, hi = intensity_window(data[finite], s["low"], s["high"])
        data = np.where(finite, data, np.asarray(lo, dtype=data.dtype))
    else:
        lo, hi = intensity_window(data, s["low"], s["high"])
    if np.can_cast(data.dtype, np.float32):  # float32 arithmetic either way: subtract while converting
        out = np.empty(data.shape, np.float32)
        np.subtract(data, np.float32(lo), out=out)
    else:
        out = np.array(data, dtype=np.float32, order="C")
        out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalise(arr: np.ndarray | torch.Tensor, settings: dict | None = None) -> torch.Tensor:
    """:func:`normalise_array` as a float32 CPU tensor (training)."""
    import torch

    data = arr if isinstance(arr, np.ndarray) else arr.cpu().numpy()
    return torch.from_numpy(normalise_array(data, settings))


HEAD_HEIGHT_MM = 170.0  # vertex to the skull base and a little below: the part of a scan that is head


def foreground_center(volume: Volume, normalised: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """LPS centre of the head: centroid of the foreground within ``HEAD_HEIGHT_MM`` of its top.

    Neck and shoulders in the field of view must not pull the centre down, so only the foreground
    below the highest (most superior, LPS z) part of the scan counts. ``normalised``: the volume
    through :func:`normalise_array` (numpy or torch), when already at hand.
    """
    t = normalised if normalised is not None else normalise_array(volume.array)
    if not isinstance(t, np.ndarray):
        t = t.detach().cpu().numpy()
    step = max(1, int(round(min(t.shape) / 64)))  # a coarse view is enough for a centroid
    small = t[::step, ::step, ::step]
    mask = small > 0.1
    if int(mask.sum()) < 10:
        mask = small > small.mean()
    k, j, i = (a.astype(float) for a in np.nonzero(mask))
    # only LPS z per voxel is needed: positions are averaged in index space and mapped once (affine)
    row = volume.geometry.index_to_physical_matrix()[2] * np.array([step, step, step, 1.0])
    z = i * row[0]
    z += j * row[1]
    z += k * row[2]
    z += row[3]
    top = float(np.percentile(z, 99.5))
    head = z >= top - HEAD_HEIGHT_MM
    if not head.any():
        head = slice(None)
    mean = np.array([i[head].mean(), j[head].mean(), k[head].mean()]) * step
    return volume.index_to_physical(mean)
