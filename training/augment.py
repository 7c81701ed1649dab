"""Intensity augmentation of batches on the training device (spatial augmentation: ``training.warps``).

Images are ``[B, C, D, H, W]`` with intensities normalised to [0, 1]. Randomness comes only from the
given ``torch.Generator`` (same seed -> same result); random numbers are drawn on the generator's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .warps import SpatialConfig


@dataclass(frozen=True)
class AugmentConfig(SpatialConfig):
    """What to randomise: the spatial settings ``training.warps`` reads (``SpatialConfig``) and the
    intensity ones, each with an on/off switch or a probability (0 = off).

    Intensity, in this order: contrast remap (monotone / non-monotone piecewise-linear, inversion),
    gamma, multiplicative bias field, blur, low resolution, noise.
    """

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


__all__ = ["AugmentConfig", "apply_intensity", "gaussian_blur"]
