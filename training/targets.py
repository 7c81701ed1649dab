"""Training targets built on the device: Gaussian heatmaps, boundary distance maps, masks, Sobel input.

Conventions: tensors are ``[B, C, D, H, W]`` with array axes (z, y, x) = (k, j, i); landmark
coordinates are continuous voxel indices ``(i, j, k)`` = (x, y, z); per-axis sizes such as sigma or
spacing are given in the same (x, y, z) order as the points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

Shape3 = tuple[int, int, int]


def _xyz(value: float | Sequence[float] | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A per-axis (x, y, z) quantity as a float tensor of shape [3]."""
    t = torch.as_tensor(value, dtype=dtype, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(3)
    if t.numel() != 3:
        raise ValueError(f"expected a scalar or 3 values (x, y, z), got {t.numel()}")
    return t


def points_inside(points_vox: torch.Tensor, shape: Shape3) -> torch.Tensor:
    """Which points lie inside the grid, i.e. within the voxels' extent [-0.5, n - 0.5] on every axis.

    ``points_vox`` is [..., 3] in (i, j, k); ``shape`` is (D, H, W). Non-finite points are outside.
    """
    d, h, w = shape
    upper = torch.tensor([w, h, d], dtype=points_vox.dtype, device=points_vox.device) - 0.5
    finite = torch.isfinite(points_vox).all(-1)
    return finite & (points_vox >= -0.5).all(-1) & (points_vox <= upper).all(-1)


def gaussian_heatmaps(
    points_vox: torch.Tensor,
    shape: Shape3,
    sigma_vox: float | Sequence[float] | torch.Tensor,
    peak: float = 100.0,
    radius_sigmas: float = 3.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Gaussian per landmark, ``[B, L, D, H, W]``, ``peak`` at the exact (sub-voxel) centre.

    Separable: three 1D Gaussians per landmark (length W, H, D), cut to a box of ``radius_sigmas``
    sigma around the centre, multiplied as an outer product, so the cost is the output write only.
    ``sigma_vox`` is a scalar or (x, y, z) voxels (anisotropic allowed). Landmarks outside the grid
    (see `points_inside`), non-finite, or with ``valid`` False give an all-zero channel.
    """
    if points_vox.ndim != 3 or points_vox.shape[-1] != 3:
        raise ValueError(f"points_vox must be [B, L, 3], got {tuple(points_vox.shape)}")
    dtype = points_vox.dtype if points_vox.is_floating_point() else torch.float32
    device = points_vox.device
    pts = points_vox.to(dtype)
    sigma = _xyz(sigma_vox, device, dtype)
    keep = points_inside(pts, shape)
    if valid is not None:
        keep = keep & valid.to(device=device, dtype=torch.bool)
    pts = torch.where(keep[..., None], pts, torch.zeros_like(pts))  # no NaN leaks into the products
    d, h, w = shape
    factors = []
    for axis, n in enumerate((w, h, d)):  # x, y, z
        coords = torch.arange(n, device=device, dtype=dtype)
        diff = coords - pts[..., axis, None]  # [B, L, n]
        g = torch.exp(-0.5 * (diff / sigma[axis]) ** 2)
        g = torch.where(diff.abs() <= radius_sigmas * sigma[axis], g, torch.zeros_like(g))
        factors.append(g)
    gx, gy, gz = factors
    gz = gz * (peak * keep.to(dtype))[..., None]
    return gz[..., :, None, None] * gy[..., None, :, None] * gx[..., None, None, :]


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Mask voxels with a 6-neighbour outside the mask (shifted comparisons on the device).

    Beyond the grid counts as "same as the edge voxel" (replicate padding): the edge of the field of
    view or of a crop is not a boundary of the structure.
    """
    outside = ~mask
    near = torch.zeros_like(mask)
    for axis in (2, 3, 4):
        n = mask.shape[axis]
        if n < 2:
            continue
        near.narrow(axis, 1, n - 1).logical_or_(outside.narrow(axis, 0, n - 1))
        near.narrow(axis, 0, n - 1).logical_or_(outside.narrow(axis, 1, n - 1))
    return mask & near


def _band_squared_distance(boundary: torch.Tensor, max_dist: float, spacing_zyx: Sequence[float]) -> torch.Tensor:
    """Exact squared Euclidean distance to the nearest boundary voxel, valid up to ``max_dist``.

    Separable min-plus filtering over a box of +-floor(max_dist / spacing) voxels per axis
    (Felzenszwalb-Huttenlocher restricted to the band): every boundary voxel closer than
    ``max_dist`` lies in that box, so inside the band the result equals the full EDT; beyond it,
    values are larger than ``max_dist`` squared (or inf) and get clipped by the caller. Runs on the
    tensor's device (a few dozen vectorised min/add passes).
    """
    g = torch.where(boundary, 0.0, torch.inf).to(torch.float32)
    for axis, step in zip((2, 3, 4), spacing_zyx, strict=True):
        reach = int(math.floor(max_dist / step + 1e-9))
        out = g.clone()
        n = g.shape[axis]
        for off in range(1, min(reach, n - 1) + 1):
            cost = (off * step) ** 2
            head, tail = g.narrow(axis, 0, n - off), g.narrow(axis, off, n - off)
            lo, hi = out.narrow(axis, off, n - off), out.narrow(axis, 0, n - off)
            torch.minimum(lo, head + cost, out=lo)
            torch.minimum(hi, tail + cost, out=hi)
        g = out
    return g


def boundary_distance_target(
    mask: torch.Tensor,
    max_dist: float = 5.0,
    spacing: float | Sequence[float] | None = None,
    scale: float = 1.0,
    method: str = "band",
) -> torch.Tensor:
    """BaPDG target: ``scale * (max_dist - d) / max_dist`` within ``max_dist`` of the mask boundary, else 0.

    ``mask`` is [B, 1, D, H, W] (bool or 0/1); d is the exact Euclidean distance to the structure's
    surface (both inside and outside). ``method="band"`` (default) computes it on the device only
    where it matters (see `_band_squared_distance`); ``method="scipy"`` runs
    ``scipy.ndimage.distance_transform_edt`` over the whole grid on the CPU (same values). With
    ``spacing`` (x, y, z) d and ``max_dist`` are in its units (mm), otherwise in voxels. Items
    without a boundary give 0.
    """
    if mask.ndim != 5:
        raise ValueError(f"mask must be [B, C, D, H, W], got {tuple(mask.shape)}")
    mask = mask.bool()
    boundary = _boundary(mask)
    zyx = (1.0, 1.0, 1.0)
    if spacing is not None:
        zyx = tuple(float(s) for s in _xyz(spacing, torch.device("cpu"), torch.float64).flip(0))
    if method == "band":
        d = torch.full(boundary.shape, torch.inf, device=boundary.device)
        if boundary.any():
            # only the band around the surface can be < max_dist: work inside its bounding box
            box = []
            for axis, step in zip((2, 3, 4), zyx, strict=True):
                dims = tuple(a for a in range(5) if a != axis)
                where = boundary.any(dim=dims).nonzero()[:, 0]
                reach = int(math.floor(max_dist / step + 1e-9))
                box.append(slice(max(int(where[0]) - reach, 0), int(where[-1]) + reach + 1))
            crop = (slice(None), slice(None), *box)
            d[crop] = _band_squared_distance(boundary[crop], max_dist, zyx).sqrt_()
    elif method == "scipy":
        bnd = boundary.cpu().numpy()
        dist = np.full(bnd.shape, np.inf, dtype=np.float32)
        for b in range(bnd.shape[0]):
            for c in range(bnd.shape[1]):
                if bnd[b, c].any():
                    dist[b, c] = ndimage.distance_transform_edt(~bnd[b, c], sampling=zyx)
        d = torch.from_numpy(dist).to(mask.device)
    else:
        raise ValueError(f"unknown distance method {method!r}; use 'band' or 'scipy'")
    return (scale * (max_dist - d.clamp(max=max_dist)) / max_dist).to(torch.float32)


def dilation_distance_target(mask: torch.Tensor, max_dist: int = 5, scale: float = 1.0) -> torch.Tensor:
    """Reference only (the published code's way): distance by repeated 3x3x3 dilation of the boundary, on CPU.

    Gives the chessboard distance (max of per-axis steps), not the Euclidean one; kept for the
    benchmark and a test. Same normalisation as `boundary_distance_target` (voxel units).
    """
    boundary = _boundary(mask.bool()).cpu().numpy()
    structure = np.ones((3, 3, 3), dtype=bool)
    out = np.zeros(boundary.shape, dtype=np.float32)
    for b in range(boundary.shape[0]):
        for c in range(boundary.shape[1]):
            current = boundary[b, c].copy()
            if not current.any():
                continue
            out[b, c][current] = max_dist
            for step in range(1, int(max_dist) + 1):
                grown = ndimage.binary_dilation(current, structure=structure)
                out[b, c][grown & ~current] = max_dist - step
                current = grown
    return torch.from_numpy(scale * out / max_dist).to(mask.device)


def mask_target(mask: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """SegDG target: the binary mask itself as float, times ``scale``."""
    return mask.to(torch.float32) * scale


def sobel_magnitude(image: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """EdgeDG input: 3D Sobel gradient magnitude of [B, 1, D, H, W], divided by its per-item max (so [0, 1])."""
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"image must be [B, 1, D, H, W], got {tuple(image.shape)}")
    x = image.to(torch.float32)
    deriv = torch.tensor([-1.0, 0.0, 1.0], device=x.device)
    smooth = torch.tensor([1.0, 2.0, 1.0], device=x.device)
    kernels = []
    for axis in range(3):  # derivative along z, y, x in turn, smoothing along the other two
        vecs = [deriv if a == axis else smooth for a in range(3)]
        kernels.append(torch.einsum("i,j,k->ijk", *vecs))
    weight = torch.stack(kernels)[:, None]  # [3, 1, 3, 3, 3]
    padded = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
    grad = F.conv3d(padded, weight)
    mag = grad.pow(2).sum(1, keepdim=True).sqrt()
    top = mag.flatten(1).amax(1).clamp_min(eps)
    return mag / top.view(-1, 1, 1, 1, 1)


def sigma_mm_to_vox(sigma_mm: float, spacing: Sequence[float]) -> tuple[float, float, float]:
    """Convert an isotropic sigma in mm to per-axis (x, y, z) voxels for a grid of ``spacing`` mm."""
    return tuple(float(sigma_mm) / float(s) for s in spacing)  # type: ignore[return-value]


__all__ = [
    "boundary_distance_target",
    "dilation_distance_target",
    "gaussian_heatmaps",
    "mask_target",
    "points_inside",
    "sigma_mm_to_vox",
    "sobel_magnitude",
]
