"""Spatial augmentation, the one path: physical warps sampled through the core's resampling.

A warp says where each output point p (LPS mm) samples the source: ``affine @ p + u(p)``, with
``affine`` a 4x4 physical transform and u an optional elastic displacement (mm) on a coarse control
grid spanning the output grid. Images and masks are read through ``napari_dglandmark.model.resample``
(the inference path's resampling); landmarks move by the inverse map, exactly for the affine part
and by fixed-point iteration for the elastic part, so all three always move together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_dglandmark.io.volume import Geometry
from napari_dglandmark.model.resample import resample


@dataclass(frozen=True)
class SpatialConfig:
    """What ``random_warp`` randomises; every part has an on/off switch or a probability (0 = off).

    Rotation about the output grid's own axes (uniform +-deg per axis, in mm about the grid centre),
    scale (zoom of the content, uniform in range, isotropic unless ``scale_isotropic`` is False),
    translation (uniform +-mm along each grid axis), elastic (Gaussian displacements of std
    ``elastic_magnitude_mm`` on an ``elastic_grid``^3 control grid, trilinearly interpolated).
    """

    p_affine: float = 1.0
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    scale_isotropic: bool = True
    translation_mm: float = 0.0
    elastic: bool = False
    p_elastic: float = 1.0
    elastic_magnitude_mm: float = 2.0  # std of control-point displacements
    elastic_grid: int = 5  # control points per axis
    # Off by default: our landmarks are lateralised, a mirrored head needs L/R landmark swaps.
    # The mirror is the patient's left-right (LPS x) axis through the grid centre, and needs
    # ``lr_permutation`` (landmark l takes the mirrored position of landmark perm[l]).
    flip_lr: bool = False
    p_flip: float = 0.5
    lr_permutation: tuple[int, ...] | None = None

    @property
    def has_spatial(self) -> bool:
        affine = self.p_affine > 0 and (
            any(r > 0 for r in self.rotation_deg) or tuple(self.scale) != (1.0, 1.0) or self.translation_mm > 0
        )
        return affine or (self.elastic and self.p_elastic > 0) or (self.flip_lr and self.p_flip > 0)


# ----------------------------------------------------------------------------- physical primitives


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation about a random axis by an angle uniform in [0, max_deg] (degrees)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def axis_rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rz @ Ry @ Rx for angles (degrees) about x, y, z."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(np.deg2rad(angles_deg)), np.sin(np.deg2rad(angles_deg))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def physical_affine(center: np.ndarray, rotation: np.ndarray, scale: float | np.ndarray,
                    translation: np.ndarray) -> np.ndarray:
    """4x4 LPS transform: scale and rotate (any 3x3 linear part) about ``center``, then translate (mm)."""
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag(np.broadcast_to(scale, (3,)))
    m[:3, 3] = center + translation - m[:3, :3] @ center
    return m


class ElasticField:
    """A smooth random displacement (mm, LPS) defined on a control grid spanning a Geometry."""

    def __init__(self, geometry: Geometry, rng: np.random.Generator, magnitude_mm: float, points: int = 5):
        self.geometry = geometry
        self.control = torch.as_tensor(rng.normal(scale=magnitude_mm, size=(1, 3, points, points, points)),
                                       dtype=torch.float64)

    def at_index(self, index: np.ndarray) -> np.ndarray:
        """Displacement (mm) at continuous voxel indices (N, 3) of the geometry."""
        size = np.array(self.geometry.size, dtype=float)
        norm = 2 * np.asarray(index, float) / np.maximum(size - 1, 1) - 1
        grid = torch.as_tensor(norm, dtype=torch.float64).view(1, -1, 1, 1, 3)
        u = F.grid_sample(self.control, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return u.view(3, -1).T.numpy()

    def dense_source_index(self, source: Geometry) -> torch.Tensor:
        """[1, 3, D, H, W] displacement in *source voxel* units on this field's grid (for resample)."""
        d, h, w = self.geometry.shape
        u = F.interpolate(self.control, size=(d, h, w), mode="trilinear", align_corners=True)[0]
        to_index = np.linalg.inv(source.direction @ np.diag(source.spacing))
        u = torch.einsum("ij,jdhw->idhw", torch.as_tensor(to_index), u)
        return u[None].float()


def warp_points(points_lps: np.ndarray, affine: np.ndarray, grid: Geometry,
                elastic: ElasticField | None = None, iterations: int = 50) -> np.ndarray:
    """Where source points land in the output of ``sample(p) = affine @ p + u(p)``."""
    inv = np.linalg.inv(affine)
    pts = np.asarray(points_lps, float)
    target = pts @ inv[:3, :3].T + inv[:3, 3]
    if elastic is None:
        return target
    p = target.copy()
    for _ in range(iterations):
        u = elastic.at_index(grid.physical_to_index(p))
        p = (pts - u) @ inv[:3, :3].T + inv[:3, 3]
    return p


# ----------------------------------------------------------------------------- drawn warps


@dataclass
class Warp:
    """One drawn warp of an output ``grid``: ``affine`` (output LPS -> source LPS), ``elastic``, ``flipped``."""

    grid: Geometry
    affine: np.ndarray
    elastic: ElasticField | None = None
    flipped: bool = False


def random_warp(grid: Geometry, config: SpatialConfig, rng: np.random.Generator) -> Warp:
    """One draw of ``config`` for sampling ``grid`` (every number is drawn, whatever the probabilities).

    Rotation, zoom and translation act in mm along the grid's own axes, about its centre, so
    anisotropic voxels and oblique grids are handled; a zoom above 1 enlarges the content.
    """
    if config.flip_lr and config.lr_permutation is None:
        raise ValueError("flip_lr needs lr_permutation: lateralised landmarks must swap L/R names")
    apply = rng.random() < config.p_affine
    angles = rng.uniform(-1.0, 1.0, 3) * np.asarray(config.rotation_deg, float)
    zoom = rng.uniform(*config.scale, 3)
    if config.scale_isotropic:
        zoom[:] = zoom[0]
    shift = rng.uniform(-1.0, 1.0, 3) * config.translation_mm
    if not apply:
        angles, zoom, shift = np.zeros(3), np.ones(3), np.zeros(3)
    flipped = bool(config.flip_lr and rng.random() < config.p_flip)
    elastic = None
    if config.elastic:
        on = rng.random() < config.p_elastic
        field = ElasticField(grid, rng, config.elastic_magnitude_mm, int(config.elastic_grid))
        elastic = field if on else None
    frame = np.asarray(grid.direction, float)
    linear = frame @ axis_rotation(angles) @ np.diag(1.0 / zoom) @ frame.T
    if flipped:
        linear = linear @ np.diag([-1.0, 1.0, 1.0])
    centre = grid.index_to_physical((np.array(grid.size, float) - 1) / 2)
    return Warp(grid, physical_affine(centre, linear, 1.0, frame @ shift), elastic, flipped)


def warp_volume(image: torch.Tensor, source: Geometry, warp: Warp, mode: str = "bilinear") -> torch.Tensor:
    """``image`` ([D, H, W] on ``source``) seen on the warp's grid: [1, 1, d, h, w], its dtype kept
    (``mode="nearest"`` for masks and labels; bool stays bool)."""
    disp = None if warp.elastic is None else warp.elastic.dense_source_index(source).to(image.device)
    out = resample(image, source, warp.grid, [warp.affine], disp, mode=mode)
    if image.dtype == torch.bool:
        return out > 0.5
    return out if image.is_floating_point() else out.round().to(image.dtype)


def warp_landmarks(points_lps: np.ndarray, warp: Warp, lr_permutation: Sequence[int] | None = None) -> np.ndarray:
    """Where landmarks ([L, 3] LPS mm, NaN where missing) land on the warp's grid (LPS mm);
    a mirrored warp re-orders them by ``lr_permutation``."""
    moved = warp_points(points_lps, warp.affine, warp.grid, warp.elastic)
    if warp.flipped and lr_permutation is not None:
        moved = moved[list(lr_permutation)]
    return moved


def warp_items(images: Sequence[torch.Tensor], grids: Sequence[Geometry], config: SpatialConfig,
               rng: np.random.Generator, masks: Sequence[torch.Tensor] | None = None,
               points_lps: Sequence[np.ndarray] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A batch: each item ([D, H, W] on its grid, grids of one shape) resampled on its own grid by its
    own ``random_warp``. Returns images [B, 1, D, H, W], masks (nearest; None without) and the
    landmarks as voxel indices (i, j, k) of the output grid [B, L, 3] float32 (None without).
    Without any spatial setting nothing is drawn and the items come back unchanged."""
    xs, ms, ps = [], [], []
    for n, (image, grid) in enumerate(zip(images, grids, strict=True)):
        warp = random_warp(grid, config, rng) if config.has_spatial else None
        xs.append(image[None, None] if warp is None else warp_volume(image, grid, warp))
        if masks is not None:
            ms.append(masks[n][None, None] if warp is None else warp_volume(masks[n], grid, warp, mode="nearest"))
        if points_lps is not None:
            moved = points_lps[n] if warp is None else warp_landmarks(points_lps[n], warp, config.lr_permutation)
            ps.append(torch.as_tensor(grid.physical_to_index(np.asarray(moved, float)), dtype=torch.float32))
    return torch.cat(xs), (torch.cat(ms) if ms else None), (torch.stack(ps) if ps else None)


__all__ = [
    "ElasticField",
    "SpatialConfig",
    "Warp",
    "axis_rotation",
    "physical_affine",
    "random_rotation",
    "random_warp",
    "warp_items",
    "warp_landmarks",
    "warp_points",
    "warp_volume",
]
