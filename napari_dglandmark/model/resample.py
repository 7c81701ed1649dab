"""Resampling a volume onto a model grid with torch (one implementation for training and inference).

A *grid* is a ``Geometry``. ``index_map`` composes: grid voxel index -> physical LPS mm
(optionally moved by a physical 4x4 transform, for augmentation) -> source voxel index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io.volume import Geometry


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
    d, h, w = grid.shape
    k, j, i = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    index = torch.stack([i, j, k], -1).double().reshape(-1, 3).numpy()
    return torch.as_tensor(grid.index_to_physical(index), dtype=torch.float32).reshape(d, h, w, 3)


def sample_at(image: torch.Tensor, source: Geometry, points_lps: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` ([C, D, H, W] or [D, H, W] on ``source``) at LPS points [B, d, h, w, 3]: [B, C, d, h, w].

    For maps that are not affine (thin-plate-spline warps); outside the source gives 0.
    """
    src = image.reshape(1, -1, *image.shape[-3:])
    if not src.is_floating_point():
        src = src.float()
    m = _normaliser(source.size) @ np.linalg.inv(source.index_to_physical_matrix())
    m = torch.as_tensor(m, dtype=torch.float32, device=src.device)
    pts = points_lps.to(src.device, torch.float32)
    coords = pts @ m[:3, :3].T + m[:3, 3]
    src = src.expand(pts.shape[0], -1, -1, -1, -1)
    return F.grid_sample(src, coords, mode=mode, padding_mode="zeros", align_corners=True)
