"""Resampling a volume onto a model grid: numpy for inference, torch for training, the same numbers.

A *grid* is a ``Geometry``. ``index_map`` composes: grid voxel index -> physical LPS mm
(optionally moved by a physical 4x4 transform, for augmentation) -> source voxel index.

Both paths interpolate trilinearly with zeros outside the source (torch: ``grid_sample`` with
``align_corners=True``; numpy: :func:`interpolate`), and tests hold them to float precision.
Inference (:func:`resample_array`) never imports torch; training (:func:`resample`, :func:`sample_at`)
works on torch tensors on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..io.geometry import Geometry

if TYPE_CHECKING:
    import torch


def grid_around(center_lps: Sequence[float], spacing: float | Sequence[float], size_xyz: Sequence[int],
                direction: np.ndarray | None = None) -> Geometry:
    """An axis-aligned (LPS, unless ``direction``) grid of ``size_xyz`` voxels centred on ``center_lps``."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    size = np.asarray(size_xyz, dtype=float)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    origin = np.asarray(center_lps, dtype=float) - d @ (sp * (size - 1) / 2)
    return Geometry(shape=tuple(int(n) for n in size_xyz[::-1]), spacing=tuple(sp.tolist()),
                    origin=tuple(origin.tolist()), direction=d)


def index_map(source: Geometry, grid: Geometry, transform: np.ndarray | None = None) -> np.ndarray:
    """4x4 affine: grid voxel index -> source voxel index, through physical space.

    ``transform`` (4x4, physical LPS -> physical LPS) moves where each grid voxel samples the source.
    """
    to_phys = grid.index_to_physical_matrix()
    if transform is not None:
        to_phys = np.asarray(transform, dtype=float) @ to_phys
    return np.linalg.inv(source.index_to_physical_matrix()) @ to_phys


# ----------------------------------------------------------------------------- numpy (inference)

def _grid_indices(shape: tuple[int, int, int]) -> np.ndarray:
    """Homogeneous voxel indices (i, j, k, 1) of every voxel of a grid, in array order: [4, D*H*W]."""
    d, h, w = shape
    k, j, i = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]).astype(float)


def source_coordinates(source: Geometry, grids: Sequence[Geometry],
                       transforms: Sequence[np.ndarray | None]) -> np.ndarray:
    """Source voxel indices (k, j, i) sampled by each grid voxel: [3, B * D*H*W] (grids of one shape)."""
    index = _grid_indices(grids[0].shape)
    parts = [(index_map(source, g, t)[:3] @ index)[::-1] for g, t in zip(grids, transforms, strict=True)]
    return np.concatenate(parts, axis=1)


def interpolate(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear values of ``image`` [D, H, W] at voxel coordinates ``coords`` [3, N] (k, j, i): [N] float32.

    Neighbours outside the image count as 0 (``grid_sample``'s zeros padding, ``align_corners=True``).
    """
    flat = np.ascontiguousarray(image, dtype=np.float32).reshape(-1)
    corners = []  # per axis: ((index, weight) of the lower neighbour, (index, weight) of the upper)
    for c, n in zip(coords, image.shape, strict=True):
        low = np.floor(c)
        frac = (c - low).astype(np.float32)
        low = low.astype(np.intp)
        pair = []
        for idx, weight in ((low, 1.0 - frac), (low + 1, frac)):
            inside = (idx >= 0) & (idx < n)
            pair.append((np.clip(idx, 0, n - 1), np.where(inside, weight, np.float32(0.0))))
        corners.append(pair)
    _, h, w = image.shape
    out = np.zeros(coords.shape[1], np.float32)
    for kk, wk in corners[0]:
        for jj, wj in corners[1]:
            row = (kk * h + jj) * w
            wkj = wk * wj
            for ii, wi in corners[2]:
                out += flat[row + ii] * (wkj * wi)
    return out


def resample_array(image: np.ndarray, source: Geometry, grid: Geometry | Sequence[Geometry],
                   transforms: Sequence[np.ndarray | None] = (None,)) -> np.ndarray:
    """Sample ``image`` ([D, H, W] on ``source``) on ``grid``: [B, 1, d, h, w] float32, one per transform.

    ``grid`` may also be a list of grids of one shape, one per transform (the fine patches).
    """
    grids = [grid] * len(transforms) if isinstance(grid, Geometry) else list(grid)
    values = interpolate(image, source_coordinates(source, grids, transforms))
    return values.reshape(len(grids), 1, *grids[0].shape)


# ----------------------------------------------------------------------------- torch (training)

def _normaliser(size_xyz: Sequence[int]) -> np.ndarray:
    """Voxel index -> grid_sample coordinate in [-1, 1] (align_corners=True)."""
    n = np.eye(4)
    for a, s in enumerate(size_xyz):
        n[a, a] = 2.0 / max(int(s) - 1, 1)
        n[a, 3] = -1.0
    return n


def sampling_grid(source: Geometry, grid: Geometry, transforms: Sequence[np.ndarray | None] = (None,),
                  displacement: torch.Tensor | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """grid_sample grids [B, D, H, W, 3] for ``grid`` over ``source``, one per transform.

    ``displacement`` [B, 3, D, H, W] (source voxels, i j k) is added after the affine part (elastic).
    """
    import torch
    import torch.nn.functional as F

    thetas = []
    for t in transforms:
        m = _normaliser(source.size) @ index_map(source, grid, t) @ np.linalg.inv(_normaliser(grid.size))
        thetas.append(m[:3])
    theta = torch.as_tensor(np.stack(thetas), dtype=torch.float32, device=device)
    d, h, w = grid.shape
    out = F.affine_grid(theta, [len(thetas), 1, d, h, w], align_corners=True)
    if displacement is not None:
        scale = torch.tensor([2.0 / max(s - 1, 1) for s in source.size], device=device)
        out = out + displacement.permute(0, 2, 3, 4, 1) * scale
    return out


def resample(image: torch.Tensor, source: Geometry, grid: Geometry,
             transforms: Sequence[np.ndarray | None] = (None,), displacement: torch.Tensor | None = None,
             mode: str = "bilinear", padding: float = 0.0) -> torch.Tensor:
    """Sample ``image`` ([D, H, W] or [1, 1, D, H, W] on ``source``) on ``grid``: [B, 1, d, h, w].

    Trilinear (``mode="bilinear"`` in torch terms) or ``"nearest"``; outside the source gives ``padding``.
    """
    import torch.nn.functional as F

    src = image.reshape(1, 1, *image.shape[-3:])
    if not src.is_floating_point():
        src = src.float()
    coords = sampling_grid(source, grid, transforms, displacement, device=src.device)
    src = src.expand(coords.shape[0], -1, -1, -1, -1)
    if padding:
        return F.grid_sample(src - padding, coords, mode=mode, padding_mode="zeros", align_corners=True) + padding
    return F.grid_sample(src, coords, mode=mode, padding_mode="zeros", align_corners=True)


def grid_points(grid: Geometry) -> torch.Tensor:
    """Physical LPS position (mm) of every voxel of ``grid``: [D, H, W, 3] float32."""
    import torch

    index = _grid_indices(grid.shape)[:3].T
    return torch.as_tensor(grid.index_to_physical(index), dtype=torch.float32).reshape(*grid.shape, 3)


def sample_at(image: torch.Tensor, source: Geometry, points_lps: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` ([C, D, H, W] or [D, H, W] on ``source``) at LPS points [B, d, h, w, 3]: [B, C, d, h, w].

    For maps that are not affine (thin-plate-spline warps); outside the source gives 0.
    """
    import torch
    import torch.nn.functional as F

    src = image.reshape(1, -1, *image.shape[-3:])
    if not src.is_floating_point():
        src = src.float()
    m = _normaliser(source.size) @ np.linalg.inv(source.index_to_physical_matrix())
    m = torch.as_tensor(m, dtype=torch.float32, device=src.device)
    pts = points_lps.to(src.device, torch.float32)
    coords = pts @ m[:3, :3].T + m[:3, 3]
    src = src.expand(pts.shape[0], -1, -1, -1, -1)
    return F.grid_sample(src, coords, mode=mode, padding_mode="zeros", align_corners=True)
