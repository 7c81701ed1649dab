"""Heatmaps -> sub-voxel landmark positions and a confidence per landmark.

``softmax-centroid`` (default): the maps are logits of a spatial softmax; the position is the
probability-weighted centroid inside a cube of ``radius`` voxels around the peak (sub-voxel, robust
to a second distant mode), and the confidence is the probability mass inside that cube: 1 when
the network is sure of one place, near 0 when its belief is spread or split between places.
``centroid``: the same on non-negative regression heatmaps (e.g. MSE-trained, peak 100 or 255),
confidence = peak height / expected peak. ``argmax``: the paper's integer argmax.

Two implementations of the same arithmetic: :func:`decode_array` (numpy, inference) and
:func:`decode` (torch tensors on any device, training); tests hold them equal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

METHODS = ("softmax-centroid", "centroid", "argmax")


def _unknown(method: str) -> ValueError:
    return ValueError(f"unknown decoding method {method!r}; use one of {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- numpy (inference)

def _cube(radius: int) -> np.ndarray:
    """Offsets (i, j, k) of a cube of ``radius`` voxels: [M, 3]."""
    offs = np.arange(-int(radius), int(radius) + 1)
    ok, oj, oi = np.meshgrid(offs, offs, offs, indexing="ij")
    return np.stack([oi, oj, ok], -1).reshape(-1, 3)


def _local_centroid_array(weights: np.ndarray, peak: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted centroid (i, j, k) and weight sum in a cube around ``peak``; weights [L, D, H, W] >= 0."""
    n, d, h, w = weights.shape
    pts = peak[:, None, :] + _cube(radius)[None]  # [L, M, 3] in (i, j, k)
    size = np.array([w, h, d])
    inside = ((pts >= 0) & (pts < size)).all(-1)
    pts_c = np.minimum(np.maximum(pts, 0), size - 1)
    flat = pts_c[..., 2] * h * w + pts_c[..., 1] * w + pts_c[..., 0]
    vals = np.take_along_axis(weights.reshape(n, -1), flat, 1) * inside
    mass = vals.sum(1)
    centre = (vals[..., None] * pts).sum(1) / np.maximum(mass, 1e-12)[:, None]
    return centre, mass


def decode_array(maps: np.ndarray, method: str = "softmax-centroid", radius: int = 2,
                 expected_peak: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Maps [L, D, H, W] -> (continuous index [L, 3] in (i, j, k), confidence [L] in [0, 1]), numpy float64."""
    maps = np.asarray(maps, dtype=np.float32)
    n, d, h, w = maps.shape
    flat = maps.reshape(n, -1)
    best = flat.argmax(-1)
    top = np.take_along_axis(flat, best[:, None], 1)  # the maxima, [L, 1]
    k, j, i = np.unravel_index(best, (d, h, w))
    peak = np.stack([i, j, k], -1)
    if method == "argmax":
        return peak.astype(float), np.clip(top[:, 0] / expected_peak, 0, 1).astype(float)
    if method == "softmax-centroid":
        # softmax = e / total; only the cube's share of it is needed, so e is never divided
        e = flat - top
        np.exp(e, out=e)
        total = e.sum(-1).astype(np.float64)  # float32 pairwise sums: ~1e-7 relative
        centre, mass = _local_centroid_array(e.reshape(n, d, h, w), peak, radius)
        return centre.astype(float), np.clip(mass / total, 0, 1)
    if method == "centroid":
        centre, _ = _local_centroid_array(np.maximum(maps, 0), peak, radius)
        return centre.astype(float), np.clip(top[:, 0] / expected_peak, 0, 1).astype(float)
    raise _unknown(method)


# ----------------------------------------------------------------------------- torch (training)

def _peak_index(flat: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    import torch

    d, h, w = shape
    idx = flat.argmax(-1)
    k, rem = idx // (h * w), idx % (h * w)
    j, i = rem // w, rem % w
    return torch.stack([i, j, k], -1)


def _local_centroid(weights: torch.Tensor, peak: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted centroid (i, j, k) and weight sum in a cube around ``peak``; weights [L, D, H, W] >= 0."""
    import torch

    n, d, h, w = weights.shape
    cube = torch.as_tensor(_cube(radius), device=weights.device)  # [M, 3] in (i, j, k)
    pts = peak[:, None, :] + cube[None]  # [L, M, 3]
    size = torch.tensor([w, h, d], device=weights.device)
    inside = ((pts >= 0) & (pts < size)).all(-1)
    pts_c = torch.minimum(pts.clamp_min(0), size - 1)
    flat = pts_c[..., 2] * h * w + pts_c[..., 1] * w + pts_c[..., 0]
    vals = weights.reshape(n, -1).gather(1, flat) * inside
    mass = vals.sum(1)
    centre = (vals[..., None] * pts.to(vals.dtype)).sum(1) / mass.clamp_min(1e-12)[:, None]
    return centre, mass


def decode(maps: torch.Tensor, method: str = "softmax-centroid", radius: int = 2,
           expected_peak: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps [L, D, H, W] (torch) -> (continuous index [L, 3] in (i, j, k), confidence [L] in [0, 1])."""
    import torch.nn.functional as F

    maps = maps.float()
    n, d, h, w = maps.shape
    flat = maps.reshape(n, -1)
    peak = _peak_index(flat, (d, h, w))
    if method == "argmax":
        conf = (flat.max(-1).values / expected_peak).clamp(0, 1)
        return peak.float(), conf
    if method == "softmax-centroid":
        prob = F.softmax(flat, -1).reshape(n, d, h, w)
        centre, mass = _local_centroid(prob, peak, radius)
        return centre, mass.clamp(0, 1)
    if method == "centroid":
        weights = maps.clamp_min(0)
        centre, _ = _local_centroid(weights, peak, radius)
        conf = (flat.max(-1).values / expected_peak).clamp(0, 1)
        return centre, conf
    raise _unknown(method)
