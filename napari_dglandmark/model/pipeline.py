"""The two-stage detection pipeline's input sampling, shared by training and inference.

Coarse stage: the head on an axis-aligned low-resolution grid centred on the foreground.
Fine stage: one high-resolution patch around each landmark's current estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..io.volume import Geometry, Volume
from .preprocess import DEFAULT_NORMALISATION, check_voxels, foreground_center, normalise
from .resample import grid_around, resample


@dataclass
class PipelineConfig:
    """Grids and decoding of a two-stage model; stored in the checkpoint metadata."""

    coarse_spacing: float = 4.0
    coarse_size: tuple[int, int, int] = (64, 64, 64)  # x, y, z voxels
    fine_spacing: float = 1.0
    fine_size: tuple[int, int, int] = (24, 24, 24)
    fine_iterations: int = 2
    decode_radius_coarse: int = 2
    decode_radius_fine: int = 3
    normalisation: dict = field(default_factory=lambda: dict(DEFAULT_NORMALISATION))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PipelineConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("coarse_size", "fine_size"):
            if key in known:
                known[key] = tuple(int(v) for v in known[key])
        return cls(**known)


@dataclass
class Source:
    """A normalised volume ready to be sampled: full resolution plus a pooled copy for the coarse grid."""

    image: torch.Tensor  # [D, H, W] float32 in [0, 1]
    geometry: Geometry
    pooled: torch.Tensor
    pooled_geometry: Geometry
    center: np.ndarray  # LPS mm of the foreground centre


def pooled_copy(image: torch.Tensor, geometry: Geometry, target_spacing: float) -> tuple[torch.Tensor, Geometry]:
    """Average-pool so the voxel size is about half the target spacing (anti-aliasing before sampling)."""
    factors = [max(1, int(target_spacing // (2 * s))) for s in geometry.spacing]  # x, y, z
    if factors == [1, 1, 1]:
        return image, geometry
    kernel = tuple(factors[::-1])  # z, y, x
    pooled = F.avg_pool3d(image[None, None], kernel, stride=kernel)[0, 0]
    first = np.array([(f - 1) / 2 for f in factors])
    geom = Geometry(shape=tuple(pooled.shape), spacing=tuple(s * f for s, f in zip(geometry.spacing, factors, strict=True)),
                    origin=tuple(geometry.index_to_physical(first).tolist()), direction=geometry.direction)
    return pooled, geom


def prepare_source(volume: Volume, config: PipelineConfig, device: torch.device | str = "cpu") -> Source:
    """Check, normalise and pool a volume once; every later sample reads from this."""
    check_voxels(volume)
    image = normalise(volume.array, config.normalisation)
    center = foreground_center(volume, image)
    image = image.to(device)
    pooled, pooled_geom = pooled_copy(image, volume.geometry, config.coarse_spacing)
    return Source(image, volume.geometry, pooled, pooled_geom, center)


def coarse_grid(config: PipelineConfig, center: Sequence[float]) -> Geometry:
    return grid_around(center, config.coarse_spacing, config.coarse_size)


def coarse_input(source: Source, grid: Geometry, transforms: Sequence[np.ndarray | None] = (None,),
                 displacement: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 1, D, H, W] coarse-grid samples of the head (one per transform)."""
    return resample(source.pooled, source.pooled_geometry, grid, transforms, displacement)


def fine_grids(config: PipelineConfig, centers: np.ndarray) -> list[Geometry]:
    return [grid_around(c, config.fine_spacing, config.fine_size) for c in np.asarray(centers).reshape(-1, 3)]


def fine_input(source: Source, grids: Sequence[Geometry], transforms: Sequence[np.ndarray | None] | None = None) -> torch.Tensor:
    """[N, 1, d, h, w] high-resolution patches, one per grid (and optional transform)."""
    transforms = transforms or [None] * len(grids)
    patches = [resample(source.image, source.geometry, g, [t]) for g, t in zip(grids, transforms, strict=True)]
    return torch.cat(patches, 0)
