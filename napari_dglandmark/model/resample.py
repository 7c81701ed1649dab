"""Resampling a volume onto a model grid: numpy for inference, torch for training, the same numbers.

A *grid* is a ``Geometry``. ``index_map`` composes: grid voxel index -> physical LPS mm
(optionally moved by a physical 4x4 transform, for augmentation) -> source voxel index.

Both paths interpolate trilinearly with zeros outside the source (torch: ``grid_sample`` with
``align_corners=True``; numpy: :func:`resample_array`), and tests hold them to float precision.
Inference (:func:`resample_array`) never imports torch; training (:func:`resample`, :func:`sample_at`)
works on torch tensors on any device.
"""

from __future__ import annotations

import functools
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


def index_map(source: Geometry | np.ndarray, grid: Geometry, transform: np.ndarray | None = None) -> np.ndarray:
    """4x4 affine: grid voxel index -> source voxel index, through physical space.

    ``transform`` (4x4, physical LPS -> physical LPS) moves where each grid voxel samples the source.
    ``source`` may also be its physical -> index matrix already inverted (many grids on one source).
    """
    to_phys = grid.index_to_physical_matrix()
    if transform is not None:
        to_phys = np.asarray(transform, dtype=float) @ to_phys
    to_index = np.linalg.inv(source.index_to_physical_matrix()) if isinstance(source, Geometry) else source
    return to_index @ to_phys


# ----------------------------------------------------------------------------- numpy (inference)

BLOCK = 1 << 14  # grid voxels sampled at a time: temporaries stay small and in cache


def _grid_indices(shape: tuple[int, int, int]) -> np.ndarray:
    """Homogeneous voxel indices (i, j, k, 1) of every voxel of a grid, in array order: [4, D*H*W]."""
    d, h, w = shape
    k, j, i = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]).astype(float)


@functools.lru_cache(maxsize=8)
def _grid_index_blocks(shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """:func:`_grid_indices` cut into blocks of at most :data:`BLOCK` voxels (cached per grid shape)."""
    index = _grid_indices(shape)
    blocks = tuple(np.ascontiguousarray(index[:, s: s + BLOCK]) for s in range(0, index.shape[1], BLOCK))
    for b in blocks:
        b.flags.writeable = False
    return blocks


def _axis_corners(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis of ``n`` voxels: (lower index, its weight, upper index, its weight); a
    neighbour outside the image gets weight 0 and an index clamped into it."""
    low = np.floor(c)
    frac = (c - low).astype(np.float32)
    low = low.astype(np.intp)
    high = low + 1
    w_low, w_high = 1.0 - frac, frac
    if low.size and (low.min() < 0 or high.max() >= n):  # some neighbour outside: zeros padding
        w_low[low.astype(np.uintp) >= n] = 0.0  # negative indices wrap to huge unsigned ones
        w_high[high.astype(np.uintp) >= n] = 0.0
        np.clip(low, 0, n - 1, out=low)
        np.clip(high, 0, n - 1, out=high)
    return low, w_low, high, w_high


def _interpolate_block(flat: np.ndarray, shape: tuple[int, int, int], coords: np.ndarray,
                       out: np.ndarray) -> None:
    """Trilinear values at ``coords`` [3, M] (k, j, i) of the C-ordered image ``flat`` of ``shape``, into ``out``."""
    _, h, w = shape
    k0, wk0, k1, wk1 = _axis_corners(coords[0], shape[0])
    j0, wj0, j1, wj1 = _axis_corners(coords[1], h)
    i0, wi0, i1, wi1 = _axis_corners(coords[2], w)
    out[:] = 0.0
    for kk, wk in ((k0, wk0), (k1, wk1)):
        plane = kk * h
        for jj, wj in ((j0, wj0), (j1, wj1)):
            row = plane + jj
            row *= w
            wkj = wk * wj
            for ii, wi in ((i0, wi0), (i1, wi1)):
                value = flat.take(row + ii)
                value *= wkj * wi
                out += value


def resample_array(image: np.ndarray, source: Geometry, grid: Geometry | Sequence[Geometry],
                   transforms: Sequence[np.ndarray | None] = (None,)) -> np.ndarray:
    """Sample ``image`` ([D, H, W] on ``source``) on ``grid``: [B, 1, d, h, w] float32, one per transform.

    ``grid`` may also be a list of grids of one shape, one per transform (the fine patches). Works
    block by block (coordinates and interpolation), so memory does not grow with the grid.
    """
    grids = [grid] * len(transforms) if isinstance(grid, Geometry) else list(grid)
    shape = grids[0].shape
    flat = np.ascontiguousarray(image, dtype=np.float32).reshape(-1)
    blocks = _grid_index_blocks(tuple(shape))
    out = np.empty((len(grids), int(np.prod(shape))), np.float32)
    to_index = np.linalg.inv(source.index_to_physical_matrix())
    for b, (g, t) in enumerate(zip(grids, transforms, strict=True)):
        to_source = index_map(to_index, g, t)[2::-1]  # rows (k, j, i) of grid index -> source index
        start = 0
        for block in blocks:
            stop = start + block.shape[1]
            _interpolate_block(flat, image.shape, to_source @ block, out[b, start:stop])
            start = stop
    return out.reshape(len(grids), 1, *shape)


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
