"""The two-stage detection pipeline's input sampling and side check, shared by training and inference.

Coarse stage: the head on an axis-aligned low-resolution grid centred on the foreground.
Fine stage: one high-resolution patch around each landmark's current estimate.

A :class:`Source` holds numpy arrays for inference (``prepare_source(..., device=None)``: no torch)
or torch tensors for training (on any device); normalisation, pooling and the centre are computed
once, in numpy, for both, and the numpy and torch samplers agree to float precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..io.geometry import Geometry, Volume
from .preprocess import DEFAULT_NORMALISATION, check_voxels, foreground_center, normalise_array
from .resample import grid_around, resample, resample_array

if TYPE_CHECKING:
    import torch


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
    """A normalised volume ready to be sampled: full resolution plus a pooled copy for the coarse grid.

    ``image`` and ``pooled`` are numpy arrays (inference) or torch tensors (training), [D, H, W]
    float32 in [0, 1].
    """

    image: np.ndarray | torch.Tensor
    geometry: Geometry
    pooled: np.ndarray | torch.Tensor
    pooled_geometry: Geometry
    center: np.ndarray  # LPS mm of the foreground centre

    @property
    def is_array(self) -> bool:
        """True for numpy arrays (the torch-free inference path)."""
        return isinstance(self.image, np.ndarray)


def _pool_factors(geometry: Geometry, target_spacing: float) -> list[int]:
    return [max(1, int(target_spacing // (2 * s))) for s in geometry.spacing]  # x, y, z


def _pooled_geometry(geometry: Geometry, factors: Sequence[int], shape: tuple[int, int, int]) -> Geometry:
    first = np.array([(f - 1) / 2 for f in factors])
    return Geometry(shape=tuple(int(n) for n in shape),
                    spacing=tuple(s * f for s, f in zip(geometry.spacing, factors, strict=True)),
                    origin=tuple(geometry.index_to_physical(first).tolist()), direction=geometry.direction)


def pooled_copy(image: np.ndarray | torch.Tensor, geometry: Geometry,
                target_spacing: float) -> tuple[np.ndarray | torch.Tensor, Geometry]:
    """Average-pool so the voxel size is about half the target spacing (anti-aliasing before sampling).

    numpy in, numpy out (block means); torch in, torch out (``avg_pool3d``, any device): the same values.
    """
    factors = _pool_factors(geometry, target_spacing)
    if factors == [1, 1, 1]:
        return image, geometry
    kz, ky, kx = factors[::-1]
    if isinstance(image, np.ndarray):
        d, h, w = (n // f for n, f in zip(image.shape, (kz, ky, kx), strict=True))
        pooled = np.zeros((d, h, w), np.float32)
        for z in range(kz):  # block sums from strided views: no reshaped copy of the volume
            for y in range(ky):
                for x in range(kx):
                    pooled += image[z: d * kz: kz, y: h * ky: ky, x: w * kx: kx]
        pooled /= np.float32(kz * ky * kx)
    else:
        import torch.nn.functional as F

        pooled = F.avg_pool3d(image[None, None], (kz, ky, kx), stride=(kz, ky, kx))[0, 0]
    return pooled, _pooled_geometry(geometry, factors, tuple(pooled.shape))


def prepare_source(volume: Volume, config: PipelineConfig, device: torch.device | str | None = "cpu") -> Source:
    """Check, normalise and pool a volume once; every later sample reads from this.

    ``device=None``: numpy arrays (inference, no torch); otherwise torch tensors on ``device`` (training).
    """
    check_voxels(volume)
    image = normalise_array(volume.array, config.normalisation)
    center = foreground_center(volume, image)
    pooled, pooled_geom = pooled_copy(image, volume.geometry, config.coarse_spacing)
    if device is not None:
        import torch

        image = torch.from_numpy(image).to(device)
        pooled = torch.from_numpy(np.ascontiguousarray(pooled)).to(device)
    return Source(image, volume.geometry, pooled, pooled_geom, center)


def coarse_grid(config: PipelineConfig, center: Sequence[float]) -> Geometry:
    return grid_around(center, config.coarse_spacing, config.coarse_size)


def coarse_input(source: Source, grid: Geometry, transforms: Sequence[np.ndarray | None] = (None,),
                 displacement: torch.Tensor | None = None) -> np.ndarray | torch.Tensor:
    """[B, 1, D, H, W] coarse-grid samples of the head (one per transform); numpy for a numpy source."""
    if source.is_array:
        if displacement is not None:
            raise ValueError("elastic displacement needs a torch source (training)")
        return resample_array(source.pooled, source.pooled_geometry, grid, transforms)
    return resample(source.pooled, source.pooled_geometry, grid, transforms, displacement)


def fine_grids(config: PipelineConfig, centers: np.ndarray) -> list[Geometry]:
    return [grid_around(c, config.fine_spacing, config.fine_size) for c in np.asarray(centers).reshape(-1, 3)]


def fine_input(source: Source, grids: Sequence[Geometry],
               transforms: Sequence[np.ndarray | None] | None = None) -> np.ndarray | torch.Tensor:
    """[N, 1, d, h, w] high-resolution patches, one per grid (and optional transform); numpy for a numpy source."""
    transforms = list(transforms or [None] * len(grids))
    if source.is_array:
        return resample_array(source.image, source.geometry, list(grids), transforms)
    import torch

    patches = [resample(source.image, source.geometry, g, [t]) for g, t in zip(grids, transforms, strict=True)]
    return torch.cat(patches, 0)


def fine_reach_mm(config: PipelineConfig) -> float:
    """How far from its centre a fine patch reads (mm), in any orientation."""
    half = config.fine_spacing * (np.asarray(config.fine_size, float) - 1) / 2
    return float(np.linalg.norm(half))


def crop_source(source: Source, centers: np.ndarray, reach_mm: float) -> Source:
    """The same source with ``image`` cut to the box that patches around ``centers`` can read
    (``reach_mm``, plus two voxels): sampling it gives the same values, at a fraction of the voxels
    for whole-image operations (test-time intensity changes). The pooled copy is kept."""
    geom = source.geometry
    index = geom.physical_to_index(np.asarray(centers, float).reshape(-1, 3))
    margin = reach_mm / min(geom.spacing) + 2.0
    size = np.asarray(geom.size)
    lo = np.clip(np.floor(index.min(0) - margin), 0, size).astype(int)
    hi = np.clip(np.ceil(index.max(0) + margin) + 1, 0, size).astype(int)
    if np.prod(np.maximum(hi - lo, 0)) > 0.7 * np.prod(size) or np.any(hi <= lo):
        return source
    image = source.image[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    cropped = Geometry(shape=tuple(int(n) for n in image.shape), spacing=geom.spacing,
                       origin=tuple(geom.index_to_physical(lo.astype(float)).tolist()), direction=geom.direction)
    return replace(source, image=image, geometry=cropped)


def side_pairs(names: Sequence[str], bilateral_pairs: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """(right, left) row indices of the bilateral pairs whose two landmarks are both in ``names``."""
    index = {n: i for i, n in enumerate(names)}
    return [(index[r], index[left]) for r, left in bilateral_pairs if r in index and left in index]


def fix_swapped_sides(positions: np.ndarray, confidence: np.ndarray, rotation: np.ndarray,
                      pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral pairs keep their sides: in the head's own frame an R landmark lies at smaller LPS x
    than its L twin (``rotation``: head frame -> image). A swapped pair is swapped back and both get
    half the lower confidence. Returns new (positions, confidence) arrays."""
    pos, conf = np.array(positions, float), np.array(confidence, float)
    x = pos @ rotation  # rows: positions in the head frame (R^T p)
    for r, left in pairs:
        if x[r, 0] > x[left, 0]:
            pos[[r, left]] = pos[[left, r]]
            x[[r, left]] = x[[left, r]]
            conf[[r, left]] = min(conf[r], conf[left]) * 0.5
    return pos, conf
