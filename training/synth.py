"""Made-up test data from real volumes: random deformations and simulated scanner shifts.

Used by evaluation tests and benchmarks (no other data can be downloaded). A deformed copy keeps
the source geometry; its landmarks are moved with the deformation, exactly (affine part) and by
fixed-point inversion (elastic part, residual < 1e-3 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.model.resample import resample


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation about a random axis by an angle uniform in [0, max_deg] (degrees)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def physical_affine(center: np.ndarray, rotation: np.ndarray, scale: float | np.ndarray,
                    translation: np.ndarray) -> np.ndarray:
    """4x4 LPS transform: scale and rotate about ``center``, then translate (mm)."""
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


@dataclass
class Deformation:
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translation_mm: float = 5.0
    elastic_mm: float = 2.0


def deform(volume: Volume, landmarks: Landmarks, rng: np.random.Generator,
           setting: Deformation | None = None) -> tuple[Volume, Landmarks]:
    """A randomly deformed copy (same grid) and its moved landmarks."""
    setting = setting or Deformation()
    geom = volume.geometry
    center = geom.index_to_physical((np.array(geom.size) - 1) / 2)
    affine = physical_affine(center, random_rotation(rng, setting.rotation_deg), rng.uniform(*setting.scale),
                             rng.uniform(-setting.translation_mm, setting.translation_mm, 3))
    elastic = ElasticField(geom, rng, setting.elastic_mm) if setting.elastic_mm > 0 else None
    disp = elastic.dense_source_index(geom) if elastic is not None else None
    image = torch.as_tensor(volume.array.astype(np.float32))
    out = resample(image, geom, geom, [affine], disp)[0, 0].numpy()
    arr = np.round(out).astype(volume.array.dtype) if np.issubdtype(volume.array.dtype, np.integer) else out
    moved = landmarks.copy()
    moved.positions = warp_points(landmarks.positions, affine, geom, elastic)
    return Volume(arr, geom, volume.path), moved


@dataclass
class ScannerShift:
    """One simulated site: a fixed combination of intensity changes (all on the [0, 1] window)."""

    name: str
    bias: float = 0.0  # std of the log bias field
    noise: float = 0.0  # Gaussian noise std (fraction of the window)
    blur_mm: float = 0.0
    low_res: float = 1.0  # slice thickening factor along z
    gamma: float = 1.0
    invert: bool = False  # invert tissue contrast inside the head (background stays dark)
    remap_seed: int | None = None  # random non-monotone piecewise-linear remap


SITES = (
    ScannerShift("site-A bias+noise", bias=0.4, noise=0.03),
    ScannerShift("site-B blur+gamma", blur_mm=1.2, gamma=0.6),
    ScannerShift("site-C thick slices", low_res=3.0, noise=0.02, gamma=1.4),
    ScannerShift("site-D inverted contrast", invert=True, bias=0.2, noise=0.02),
    ScannerShift("site-E remapped contrast", remap_seed=7, blur_mm=0.8, bias=0.3),
)


def scanner_shift(volume: Volume, site: ScannerShift, rng: np.random.Generator) -> Volume:
    """The volume as another scanner might show it (float32 voxels)."""
    from scipy import ndimage

    arr = volume.array.astype(np.float32)
    lo, hi = np.percentile(arr[::3, ::3, ::3], [0.5, 99.5])
    x = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    head = ndimage.binary_closing(x > 0.08, iterations=2)
    if site.remap_seed is not None:
        knots = np.random.default_rng(site.remap_seed).uniform(0, 1, 6)
        knots[0] = 0.0
        x = np.interp(x, np.linspace(0, 1, 6), knots).astype(np.float32)
    if site.invert:
        x = np.where(head, 1.0 - x, x)
    if site.gamma != 1.0:
        x = x ** site.gamma
    if site.bias > 0:
        coarse = rng.normal(scale=site.bias, size=(4, 4, 4))
        field = ndimage.zoom(coarse, np.array(x.shape) / 4, order=3)[: x.shape[0], : x.shape[1], : x.shape[2]]
        x = x * np.exp(field)
    if site.blur_mm > 0:
        sigma = [site.blur_mm / s for s in volume.spacing[::-1]]
        x = ndimage.gaussian_filter(x, sigma)
    if site.low_res > 1:
        f = site.low_res
        small = ndimage.zoom(x, (1 / f, 1, 1), order=1)
        x = ndimage.zoom(small, (x.shape[0] / small.shape[0], 1, 1), order=1)[: x.shape[0]]
    if site.noise > 0:
        x = x + rng.normal(scale=site.noise, size=x.shape).astype(np.float32)
    x = np.where(head, x, x * 0.2)
    return Volume((x * 1000).astype(np.float32), volume.geometry, volume.path)
