"""Batched data augmentation on the training device; image, masks and landmarks move together.

Conventions: images are ``[B, C, D, H, W]`` (array axes z, y, x), intensities normalised to [0, 1];
landmarks are continuous voxel indices ``(i, j, k)`` = (x, y, z), ``[B, L, 3]``. Spacing and other
per-axis values are (x, y, z). Randomness comes only from the given ``torch.Generator``
(same seed -> same result); random numbers are drawn on the generator's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .targets import points_inside

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise; every part has an on/off switch or a probability (0 = off).

    Spatial (one resampling for all): rotation about x, y, z (uniform +-deg per axis, in mm space),
    scale (zoom of the content, uniform in range, isotropic unless ``scale_isotropic`` is False),
    translation (uniform +-mm per axis), elastic (random displacements on a coarse control grid,
    trilinearly interpolated). Intensity, in this order: contrast remap (monotone / non-monotone
    piecewise-linear, inversion), gamma, multiplicative bias field, blur, low resolution, noise.
    """

    # spatial
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
    # Flipping mirrors the i (x) axis, which is left-right only for near-axial (RAS/LPS) volumes,
    # and needs ``lr_permutation`` (landmark l takes the flipped position of landmark perm[l]).
    flip_lr: bool = False
    p_flip: float = 0.5
    lr_permutation: tuple[int, ...] | None = None
    # intensity
    p_remap_monotone: float = 0.0
    p_remap_nonmonotone: float = 0.0
    p_invert: float = 0.0
    remap_knots: int = 6
    p_gamma: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)
    p_bias: float = 0.0
    bias_strength: float = 0.3  # std of the log-field at the control points
    bias_grid: int = 4
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)  # voxels
    p_low_res: float = 0.0
    low_res_factor: tuple[float, float] = (1.5, 3.0)
    p_noise: float = 0.0
    noise_std: tuple[float, float] = (0.0, 0.05)

    @property
    def has_spatial(self) -> bool:
        affine = self.p_affine > 0 and (
            any(r > 0 for r in self.rotation_deg) or tuple(self.scale) != (1.0, 1.0) or self.translation_mm > 0
        )
        return affine or (self.elastic and self.p_elastic > 0) or (self.flip_lr and self.p_flip > 0)

    @property
    def has_intensity(self) -> bool:
        return any(
            p > 0
            for p in (self.p_remap_monotone, self.p_remap_nonmonotone, self.p_invert, self.p_gamma,
                      self.p_bias, self.p_blur, self.p_low_res, self.p_noise)
        )

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """'identity', 'baseline' (+-5 deg, the paper), 'augdg' (+-15 deg), 'default' (strong mix), 'robust', 'spatial'."""
        spatial = dict(rotation_deg=(10.0, 10.0, 10.0), scale=(0.9, 1.1), translation_mm=5.0, elastic=True,
                       p_elastic=0.5, elastic_magnitude_mm=2.0, elastic_grid=5)
        presets = {
            "identity": {},
            "baseline": dict(rotation_deg=(5.0, 5.0, 5.0)),
            "augdg": dict(rotation_deg=(15.0, 15.0, 15.0)),
            "spatial": spatial,
            # milder intensity changes for items that are already random contrasts (robust recipe)
            "robust": dict(
                spatial, p_remap_monotone=0.2, p_gamma=0.4, p_bias=0.5, bias_strength=0.25, p_blur=0.2,
                p_low_res=0.3, p_noise=0.4, noise_std=(0.0, 0.03),
            ),
            "default": dict(
                spatial, p_remap_monotone=0.3, p_remap_nonmonotone=0.2, p_invert=0.1, p_gamma=0.5,
                p_bias=0.5, p_blur=0.2, p_low_res=0.2, p_noise=0.5,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(presets)}")
        return cls(**presets[name])

    def with_(self, **changes) -> AugmentConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class SpatialTransform:
    """Per-item map from output voxel index p (i, j, k) to input voxel index: ``A @ (p + u(p)) + b``.

    ``matrix`` [B, 3, 4] holds (A | b). ``elastic`` [B, 3, g, g, g] holds displacements u, in output
    voxels (components i, j, k), on a control grid spanning the output grid corner to corner; u at
    any point is its trilinear interpolation (grid_sample, align_corners=True). ``flipped`` [B] marks
    items mirrored along i (landmarks then need ``lr_permutation``).
    """

    matrix: torch.Tensor
    shape: Shape3
    elastic: torch.Tensor | None = None
    flipped: torch.Tensor | None = None
    lr_permutation: tuple[int, ...] | None = field(default=None)

    @property
    def batch(self) -> int:
        return self.matrix.shape[0]


class AugmentedBatch(NamedTuple):
    image: torch.Tensor
    points_vox: torch.Tensor
    masks: torch.Tensor | None
    valid: torch.Tensor


# ----------------------------------------------------------------------------- random helpers


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(generator, *size, device) -> torch.Tensor:
    return torch.rand(*size, generator=generator, device=_gen_device(generator)).to(device)


def _randn(generator, *size, device) -> torch.Tensor:
    return torch.randn(*size, generator=generator, device=_gen_device(generator)).to(device)


def _uniform(generator, lo: float, hi: float, *size, device) -> torch.Tensor:
    return lo + (hi - lo) * _rand(generator, *size, device=device)


def _coin(generator, p: float, batch: int, device) -> torch.Tensor:
    """Per-item Bernoulli(p) flags; always draws, so later draws don't depend on p being 0 or 1."""
    return _rand(generator, batch, device=device) < p


# ----------------------------------------------------------------------------- spatial


def _rotation_xyz(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [B, 3, 3] = Rz @ Ry @ Rx from angles [B, 3] (radians about x, y, z)."""
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def identity_transform(batch: int, shape: Shape3, device: torch.device | str = "cpu") -> SpatialTransform:
    """The transform that changes nothing."""
    eye = torch.eye(3, 4, device=device).expand(batch, 3, 4).clone()
    return SpatialTransform(matrix=eye, shape=tuple(shape))


def random_spatial_transform(
    batch: int,
    shape: Shape3,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    device: torch.device | str = "cpu",
) -> SpatialTransform:
    """Draw per-item transforms for a ``shape`` = (D, H, W) grid of ``spacing`` (x, y, z) mm.

    Rotation and scale act in mm about the grid centre (correct for anisotropic voxels).
    """
    device = torch.device(device)
    d, h, w = shape
    sp = torch.tensor([float(s) for s in spacing], device=device)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2, (d - 1) / 2], device=device)

    apply = _coin(generator, config.p_affine, batch, device).float()[:, None]
    max_rot = torch.tensor([math.radians(a) for a in config.rotation_deg], device=device)
    angles = (2 * _rand(generator, batch, 3, device=device) - 1) * max_rot * apply
    lo, hi = config.scale
    zoom = _uniform(generator, lo, hi, batch, 3, device=device)
    if config.scale_isotropic:
        zoom = zoom[:, :1].expand(batch, 3)
    zoom = torch.where(apply > 0, zoom, torch.ones_like(zoom))
    shift_mm = (2 * _rand(generator, batch, 3, device=device) - 1) * config.translation_mm * apply

    flipped = None
    sign = torch.ones(batch, 3, device=device)
    if config.flip_lr:
        if config.lr_permutation is None:
            raise ValueError("flip_lr needs lr_permutation: lateralised landmarks must swap L/R names")
        flipped = _coin(generator, config.p_flip, batch, device)
        sign[:, 0] = torch.where(flipped, -1.0, 1.0)

    # output offset (mm) -> input offset (mm): R @ diag(sign / zoom); zoom > 1 enlarges the content
    rot = _rotation_xyz(angles)
    a_mm = rot @ torch.diag_embed(sign / zoom)
    a_vox = torch.diag(1 / sp) @ a_mm @ torch.diag(sp)
    b = centre + shift_mm / sp - (a_vox @ centre[:, None])[..., 0]
    matrix = torch.cat([a_vox, b[..., None]], -1)

    elastic = None
    if config.elastic:
        g = int(config.elastic_grid)
        on = _coin(generator, config.p_elastic, batch, device).float().view(batch, 1, 1, 1, 1)
        disp_mm = _randn(generator, batch, 3, g, g, g, device=device) * config.elastic_magnitude_mm
        elastic = disp_mm / sp.view(1, 3, 1, 1, 1) * on
    return SpatialTransform(matrix=matrix, shape=tuple(shape), elastic=elastic, flipped=flipped,
                            lr_permutation=config.lr_permutation)


def _normalise(points: torch.Tensor, shape: Shape3) -> torch.Tensor:
    """Voxel index (i, j, k) -> grid_sample coordinates in [-1, 1] (align_corners=True)."""
    d, h, w = shape
    size = torch.tensor([w, h, d], dtype=points.dtype, device=points.device)
    return 2 * points / (size - 1).clamp_min(1) - 1


def _elastic_at(elastic: torch.Tensor, points: torch.Tensor, shape: Shape3) -> torch.Tensor:
    """Displacement u (voxels, i j k) at output points [B, N, 3] -> [B, N, 3]."""
    grid = _normalise(points, shape).view(points.shape[0], -1, 1, 1, 3)
    u = F.grid_sample(elastic.to(points.dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return u.view(points.shape[0], 3, -1).transpose(1, 2)


def sampling_grid(transform: SpatialTransform) -> torch.Tensor:
    """grid_sample grid [B, D, H, W, 3]: normalised input (x, y, z) for every output voxel."""
    d, h, w = transform.shape
    device = transform.matrix.device
    k, j, i = torch.meshgrid(
        torch.arange(d, device=device, dtype=torch.float32),
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    p = torch.stack([i, j, k], -1).view(1, -1, 3).expand(transform.batch, -1, -1)
    if transform.elastic is not None:
        p = p + _elastic_at(transform.elastic, p.contiguous(), transform.shape)
    a, b = transform.matrix[..., :3], transform.matrix[..., 3]
    q = p @ a.transpose(1, 2) + b[:, None]
    return _normalise(q, transform.shape).view(transform.batch, d, h, w, 3)


def apply_spatial(image: torch.Tensor, transform: SpatialTransform, mode: str = "bilinear",
                  padding_mode: str = "zeros") -> torch.Tensor:
    """Resample [B, C, D, H, W] (trilinear; ``mode="nearest"`` for masks/labels; bool kept bool)."""
    if tuple(image.shape[2:]) != tuple(transform.shape):
        raise ValueError(f"image grid {tuple(image.shape[2:])} != transform grid {transform.shape}")
    grid = sampling_grid(transform)
    dtype = image.dtype
    src = image if image.is_floating_point() else image.to(torch.float32)
    out = F.grid_sample(src, grid.to(src.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)
    if dtype == torch.bool:
        return out > 0.5
    return out if image.is_floating_point() else out.round().to(dtype)


def transform_points(
    points_vox: torch.Tensor, transform: SpatialTransform, iterations: int = 30, return_residual: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Input-grid landmarks [B, L, 3] -> where they land in the output grid (inverse of the sampling map).

    Affine part: exact inverse. Elastic part: fixed-point iteration p <- y - u(p), which converges
    when u's Lipschitz constant is below 1 (true for the presets: 2 mm std on a 5-point grid over
    100+ mm). The residual ``|p + u(p) - y|`` is below 1e-3 voxel after 30 iterations in the tests.
    With a flip, channels are re-ordered by ``lr_permutation``. ``return_residual`` also returns
    that residual [B, L] (voxels; 0 without elastic) so callers can drop points that did not converge.
    """
    a, b = transform.matrix[..., :3].double(), transform.matrix[..., 3].double()
    q = points_vox.double().to(a.device)
    y = torch.linalg.solve(a[:, None], (q - b[:, None])[..., None])[..., 0]
    p = y
    residual = torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
    if transform.elastic is not None:
        elastic = transform.elastic.double()
        for _ in range(iterations):
            p = y - _elastic_at(elastic, p, transform.shape)
        residual = (p + _elastic_at(elastic, p, transform.shape) - y).norm(dim=-1)
    p = p.to(points_vox.dtype if points_vox.is_floating_point() else torch.float32)
    if transform.flipped is not None and transform.lr_permutation is not None:
        perm = torch.as_tensor(transform.lr_permutation, device=p.device)
        flipped = transform.flipped.view(-1, 1).to(p.device)
        p = torch.where(flipped[..., None], p[:, perm], p)
        residual = torch.where(flipped, residual[:, perm], residual)
    return (p, residual.float()) if return_residual else p


# ----------------------------------------------------------------------------- intensity


def _piecewise_linear(x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Per-item map of [B, C, ...] in [0, 1] through K + 1 evenly spaced knots ``knots_y`` [B, K + 1]."""
    bsz = x.shape[0]
    k = knots_y.shape[1] - 1
    flat = x.reshape(bsz, -1).clamp(0, 1) * k
    idx = flat.floor().clamp(0, k - 1)
    frac = flat - idx
    idx = idx.long()
    y0 = torch.gather(knots_y, 1, idx)
    y1 = torch.gather(knots_y, 1, idx + 1)
    return (y0 + frac * (y1 - y0)).view_as(x)


def _gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised kernels [N, 2 * radius + 1]; sigma 0 gives a delta."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    kern = torch.exp(-0.5 * (t / s) ** 2)
    return kern / kern.sum(1, keepdim=True)


def gaussian_blur(image: torch.Tensor, sigma_vox: torch.Tensor) -> torch.Tensor:
    """Separable per-item Gaussian blur of [B, C, D, H, W]; ``sigma_vox`` [B] (0 = unchanged)."""
    bsz, ch = image.shape[:2]
    radius = max(1, int(math.ceil(3 * float(sigma_vox.max()))))
    kern = _gaussian_kernel1d(sigma_vox.to(image.device), radius).repeat_interleave(ch, 0)  # [B*C, K]
    x = image.reshape(1, bsz * ch, *image.shape[2:])
    for axis in range(3):
        shape = [bsz * ch, 1, 1, 1, 1]
        shape[2 + axis] = -1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), kern.view(shape).to(x.dtype), groups=bsz * ch)
    return x.view_as(image)


def apply_intensity(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random intensity changes per item (each with its probability); output stays finite and in [0, 1].

    Remaps and gamma act on [0, 1]-clipped input; at the end values are clipped at 0 and items whose
    max exceeds 1 (bias field) are divided by their max, which keeps intensity order.
    """
    if not config.has_intensity:
        return image
    bsz, device = image.shape[0], image.device
    x = image.to(torch.float32)
    view = (bsz, 1, 1, 1, 1)
    k = max(1, int(config.remap_knots))

    # contrast remapping: random monotone curve, random non-monotone curve, inversion
    on = _coin(generator, config.p_remap_monotone, bsz, device)
    steps = _rand(generator, bsz, k, device=device) + 0.05
    mono = torch.cat([torch.zeros(bsz, 1, device=device), steps.cumsum(1)], 1)
    mono = mono / mono[:, -1:]
    if on.any():
        x = torch.where(on.view(view), _piecewise_linear(x, mono), x)
    on = _coin(generator, config.p_remap_nonmonotone, bsz, device)
    knots = _rand(generator, bsz, k + 1, device=device)
    if on.any():
        x = torch.where(on.view(view), _piecewise_linear(x, knots), x)
    on = _coin(generator, config.p_invert, bsz, device)
    if on.any():
        x = torch.where(on.view(view), 1 - x.clamp(0, 1), x)

    # gamma (log-uniform)
    on = _coin(generator, config.p_gamma, bsz, device)
    lo, hi = config.gamma
    gamma = torch.exp(_uniform(generator, math.log(lo), math.log(hi), bsz, device=device))
    if on.any():
        x = torch.where(on.view(view), x.clamp(0, 1) ** gamma.view(view), x)

    # smooth multiplicative bias field: exp of a coarse random grid, trilinearly upsampled
    on = _coin(generator, config.p_bias, bsz, device)
    g = max(2, int(config.bias_grid))
    coarse = _randn(generator, bsz, 1, g, g, g, device=device) * config.bias_strength
    if on.any():
        bias = torch.exp(F.interpolate(coarse, size=x.shape[2:], mode="trilinear", align_corners=True))
        x = torch.where(on.view(view), x * bias, x)

    # blur
    on = _coin(generator, config.p_blur, bsz, device)
    sigma = _uniform(generator, *config.blur_sigma, bsz, device=device)
    if on.any():
        x = torch.where(on.view(view), gaussian_blur(x, torch.where(on, sigma, torch.zeros_like(sigma))), x)

    # low resolution: area downsample then trilinear upsample (per item: factors differ)
    on = _coin(generator, config.p_low_res, bsz, device)
    factor = _uniform(generator, *config.low_res_factor, bsz, device=device)
    if on.any():
        items = []
        for b in range(bsz):
            item = x[b : b + 1]
            if bool(on[b]):
                small = [max(2, int(round(n / float(factor[b])))) for n in x.shape[2:]]
                item = F.interpolate(F.interpolate(item, size=small, mode="area"), size=x.shape[2:],
                                     mode="trilinear", align_corners=False)
            items.append(item)
        x = torch.cat(items, 0)

    # additive Gaussian noise
    on = _coin(generator, config.p_noise, bsz, device)
    std = _uniform(generator, *config.noise_std, bsz, device=device)
    if on.any():
        noise = _randn(generator, *x.shape, device=device) * (std * on).view(view)
        x = x + noise

    x = x.clamp_min(0)
    x = x / x.flatten(1).amax(1).clamp_min(1.0).view(view)
    return x.to(image.dtype) if image.is_floating_point() else x


# ----------------------------------------------------------------------------- all at once


def augment_batch(
    image: torch.Tensor,
    points_vox: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
    masks: torch.Tensor | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    valid: torch.Tensor | None = None,
) -> AugmentedBatch:
    """Spatial then intensity augmentation of a batch; returns (image, points_vox, masks, valid).

    ``valid`` [B, L] is False for points that were invalid on input or left the grid.
    Masks are resampled with nearest neighbour and get no intensity changes.
    """
    shape = tuple(image.shape[2:])
    if config.has_spatial:
        transform = random_spatial_transform(image.shape[0], shape, config, generator, spacing, image.device)
        image = apply_spatial(image, transform)
        if masks is not None:
            masks = apply_spatial(masks, transform, mode="nearest")
        new_points = transform_points(points_vox, transform)
        if valid is not None and transform.flipped is not None and transform.lr_permutation is not None:
            perm = torch.as_tensor(transform.lr_permutation, device=valid.device)
            valid = torch.where(transform.flipped.view(-1, 1).to(valid.device), valid[:, perm], valid)
        points_vox = new_points
    image = apply_intensity(image, config, generator)
    inside = points_inside(points_vox, shape)
    valid = inside if valid is None else inside & valid.to(inside.device, torch.bool)
    return AugmentedBatch(image, points_vox, masks, valid)


__all__ = [
    "AugmentConfig",
    "AugmentedBatch",
    "SpatialTransform",
    "apply_intensity",
    "apply_spatial",
    "augment_batch",
    "gaussian_blur",
    "identity_transform",
    "random_spatial_transform",
    "sampling_grid",
    "transform_points",
]
