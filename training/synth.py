"""Made-up test data from real volumes: random deformations, simulated scanner shifts, synthetic contrasts.

Used by evaluation tests, benchmarks and training (no other data can be downloaded). A deformed copy
keeps the source geometry; its landmarks are moved with the deformation (``training.warps``: exactly
for the affine part, by fixed-point inversion for the elastic part, residual < 1e-3 mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.model.resample import resample

from .warps import ElasticField, Warp, physical_affine, random_rotation, warp_landmarks, warp_volume


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
    warp = Warp(geom, affine, ElasticField(geom, rng, setting.elastic_mm) if setting.elastic_mm > 0 else None)
    out = warp_volume(torch.as_tensor(volume.array.astype(np.float32)), geom, warp)[0, 0].numpy()
    arr = np.round(out).astype(volume.array.dtype) if np.issubdtype(volume.array.dtype, np.integer) else out
    moved = landmarks.copy()
    moved.positions = warp_landmarks(landmarks.positions, warp)
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


# ----------------------------------------------------------------------------- label maps and synthetic contrasts

#: tissue classes of ``tissue_labels`` (index = label value)
TISSUES = ("background", "csf", "grey matter", "white matter", "deep grey matter",
           "dark head tissue", "mid head tissue", "bright head tissue")
BRAIN_TISSUES = (1, 2, 3, 4)


def tissue_labels(t1: Volume, grey: Volume, white: Volume) -> np.ndarray:
    """A tissue label map (values index ``TISSUES``) on the T1's grid, for contrast synthesis.

    Brain: the hull of the grey+white probability maps (resampled by physical position), split into
    CSF / grey / white by multi-Otsu thresholds of the T1 inside it; grey matter deep inside the
    hull is its own class (it differs from cortex in T2 and FLAIR). Head outside the brain: three
    intensity classes of the T1 (skull and air-filled spaces, muscle, fat and marrow).
    """
    from scipy import ndimage
    from skimage.filters import threshold_multiotsu

    geom = t1.geometry
    x = torch.as_tensor(t1.array.astype(np.float32))
    lo, hi = np.percentile(t1.array[::2, ::2, ::2], [0.5, 99.5])
    x = ((x - lo) / max(hi - lo, 1e-6)).clamp(0, 1).numpy()
    gw = sum(resample(torch.as_tensor(v.array.astype(np.float32)), v.geometry, geom)[0, 0].numpy() for v in (grey, white))
    brain = gw > 0.5 * max(float(grey.array.max()), 1.0)
    hull = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=4))
    hull = ndimage.binary_dilation(hull, iterations=1)
    head = ndimage.binary_fill_holes(ndimage.binary_closing(x > 0.06, iterations=3)) | hull
    labels = np.zeros(x.shape, np.uint8)
    t_brain = threshold_multiotsu(x[hull], classes=3)
    labels[hull] = 1 + np.digitize(x[hull], t_brain)
    depth = ndimage.distance_transform_edt(hull)
    labels[(labels == 2) & (depth > 18)] = 4
    outside = head & ~hull
    t_head = threshold_multiotsu(x[outside], classes=3)
    labels[outside] = 5 + np.digitize(x[outside], t_head)
    return labels


def one_hot(labels: np.ndarray, classes: int = len(TISSUES)) -> torch.Tensor:
    """[C, D, H, W] float32 one-hot of a label map."""
    t = torch.as_tensor(labels.astype(np.int64))
    return F.one_hot(t, classes).permute(3, 0, 1, 2).float().contiguous()


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [B, 1, D, H, W] with a per-item sigma (voxels; 0 = none)."""
    out = []
    for item, s in zip(x, sigma.tolist(), strict=True):
        if s < 0.2:
            out.append(item)
            continue
        r = max(1, int(math.ceil(2.5 * s)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / s) ** 2)
        k = (k / k.sum()).to(x.device)
        y = item[None]
        for dim in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + dim] = -1
            y = F.conv3d(y, k.view(shape), padding=tuple(r if d == dim else 0 for d in range(3)))
        out.append(y[0])
    return torch.stack(out)


def synthesize_contrast(tissues: torch.Tensor, generator: torch.Generator, skull_strip: torch.Tensor | None = None,
                        max_blur_vox: float = 1.0) -> torch.Tensor:
    """A random MR-like contrast from tissue probabilities [B, C, D, H, W] (SynthSeg-style): [B, 1, D, H, W] in [0, 1].

    Every class draws its own mean and texture; the background stays dark (as in every MR
    contrast). ``skull_strip`` [B] bool makes the head outside the brain background (brain-extracted
    inputs). Partial volume comes from the tissue probabilities and a random blur.
    """
    b, c = tissues.shape[:2]
    dev = tissues.device
    means = torch.rand(b, c, generator=generator).to(dev)
    means[:, 0] = torch.rand(b, generator=generator).to(dev) * 0.06
    stds = torch.rand(b, c, generator=generator).to(dev) * 0.05
    if skull_strip is not None:
        outside = [k for k in range(c) if k not in BRAIN_TISSUES and k != 0]
        for k in outside:
            means[:, k] = torch.where(skull_strip.to(dev), means[:, 0], means[:, k])
            stds[:, k] = torch.where(skull_strip.to(dev), stds[:, 0], stds[:, k])
    view = (b, c, 1, 1, 1)
    noise = torch.randn(b, 1, *tissues.shape[2:], generator=generator).to(dev)
    x = (tissues * means.view(view)).sum(1, keepdim=True) + (tissues * stds.view(view)).sum(1, keepdim=True) * noise
    x = _blur(x.clamp_min(0), torch.rand(b, generator=generator) * max_blur_vox)
    flat = x.flatten(1)[:, ::7]
    hi = torch.quantile(flat, 0.995, dim=1).clamp_min(1e-3)
    return (x / hi.view(b, 1, 1, 1, 1)).clamp(0, 1)


# ----------------------------------------------------------------------------- fixed hard cases (benchmarks, tests)

#: fixed tissue intensities (``TISSUES`` order) of contrasts the models never see as such
CONTRASTS = {
    "T2-like": (0.0, 1.0, 0.55, 0.35, 0.45, 0.05, 0.3, 0.55),
    "FLAIR-like": (0.0, 0.08, 0.65, 0.45, 0.55, 0.05, 0.35, 0.6),
    "PD-like": (0.0, 0.85, 0.75, 0.55, 0.7, 0.05, 0.45, 0.7),
}


def rotated_copy(volume: Volume, landmarks: Landmarks, axis: int, angle_deg: float,
                 pad_mm: float = 40.0) -> tuple[Volume, Landmarks]:
    """The head rotated by ``angle_deg`` about LPS axis ``axis`` (0 x, 1 y, 2 z) through the volume
    centre, on a grid grown by ``pad_mm`` per side so nothing is cut off; landmarks move exactly."""
    geom = volume.geometry
    center = geom.index_to_physical((np.array(geom.size) - 1) / 2)
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    pad = np.round(pad_mm / np.asarray(geom.spacing)).astype(int)
    size = np.array(geom.size) + 2 * pad
    origin = geom.index_to_physical(-pad.astype(float))
    out_geom = Geometry(shape=tuple(int(n) for n in size[::-1]), spacing=geom.spacing, origin=tuple(origin),
                        direction=geom.direction)
    # output point -> where it was before rotating
    warp = Warp(out_geom, physical_affine(center, rot.T, 1.0, np.zeros(3)))
    image = warp_volume(torch.as_tensor(volume.array.astype(np.float32)), geom, warp)[0, 0].numpy()
    moved = landmarks.copy()
    moved.positions = warp_landmarks(landmarks.positions, warp)
    return Volume(image, out_geom, volume.path), moved


def warped_to_shape(volume: Volume, landmarks: Landmarks, target: np.ndarray,
                    labels: np.ndarray | None = None) -> tuple[Volume, Landmarks, np.ndarray | None]:
    """The volume (and its tissue labels) warped by a thin-plate spline so its landmarks land on
    ``target`` (LPS, same grid); the returned landmarks are ``target`` exactly."""
    from napari_dglandmark.model.resample import grid_points, sample_at

    from .shapes import landmark_warp

    warp = landmark_warp(target, landmarks.positions)
    pts = warp(grid_points(volume.geometry).reshape(-1, 3)).reshape(1, *volume.geometry.shape, 3)
    image = sample_at(torch.as_tensor(volume.array.astype(np.float32)), volume.geometry, pts)[0, 0].numpy()
    warped_labels = None
    if labels is not None:
        warped_labels = sample_at(torch.as_tensor(labels), volume.geometry, pts, mode="nearest")[0, 0].numpy()
        warped_labels = warped_labels.astype(np.uint8)
    moved = landmarks.copy()
    moved.positions = np.where(np.isnan(target), np.nan, target)
    return Volume(image, volume.geometry, volume.path), moved, warped_labels


def render_contrast(labels: np.ndarray, geometry: Geometry, contrast: str, rng: np.random.Generator,
                    noise: float = 0.02, blur_mm: float = 0.8, bias: float = 0.2) -> Volume:
    """A fixed synthetic contrast (``CONTRASTS``) from a label map, with mild texture, blur, bias and noise."""
    from scipy import ndimage

    table = np.asarray(CONTRASTS[contrast], np.float32)
    x = table[labels]
    x = ndimage.gaussian_filter(x, [blur_mm / s for s in geometry.spacing[::-1]])
    if bias > 0:
        coarse = rng.normal(scale=bias, size=(4, 4, 4))
        field = ndimage.zoom(coarse, np.array(x.shape) / 4, order=3)[: x.shape[0], : x.shape[1], : x.shape[2]]
        x = x * np.exp(field)
    x = x + rng.normal(scale=noise, size=x.shape).astype(np.float32) * (labels > 0)
    return Volume((np.clip(x, 0, None) * 1000).astype(np.float32), geometry, None)


def thick_slices(volume: Volume, factor: int) -> Volume:
    """The volume as a 2D acquisition with ``factor`` times thicker slices along its third (k) axis.

    Each new slice is the mean of ``factor`` old ones (a slab, as the slice profile integrates), its
    centre where the slab's centre was; the grid's spacing and origin say so, so positions in mm keep
    their meaning. Slices beyond the last whole slab are dropped.
    """
    geom = volume.geometry
    n = geom.shape[0] // factor
    if n < 1:
        raise ValueError(f"{geom.shape[0]} slices cannot make slabs of {factor}")
    slabs = volume.array[: n * factor].astype(np.float32).reshape(n, factor, *geom.shape[1:]).mean(1)
    origin = geom.index_to_physical(np.array([0.0, 0.0, (factor - 1) / 2]))
    spacing = (geom.spacing[0], geom.spacing[1], geom.spacing[2] * factor)
    out = Geometry(shape=(n, *geom.shape[1:]), spacing=spacing, origin=tuple(origin), direction=geom.direction)
    return Volume(slabs, out, volume.path)
