"""Intensity augmentation: invariants, determinism, presets (spatial augmentation: test_warps.py)."""

from __future__ import annotations

import pytest
import torch

from training.augment import AugmentConfig, apply_intensity


def _ramp(batch=4, n=16):
    x = torch.linspace(0, 1, n * n * n).view(1, 1, n, n, n)
    return x.expand(batch, 1, n, n, n).clone()


def test_intensity_all_on_keeps_shape_finite_range_and_is_deterministic():
    cfg = AugmentConfig.preset("default").with_(
        p_remap_monotone=1.0, p_remap_nonmonotone=1.0, p_invert=1.0, p_gamma=1.0, p_bias=1.0, p_blur=1.0,
        p_low_res=1.0, p_noise=1.0,
    )
    img = _ramp()
    a = apply_intensity(img, cfg, torch.Generator().manual_seed(1))
    b = apply_intensity(img, cfg, torch.Generator().manual_seed(1))
    assert a.shape == img.shape and a.dtype == img.dtype
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, apply_intensity(img, cfg, torch.Generator().manual_seed(2)))
    assert not torch.allclose(a, img, atol=0.05)


@pytest.mark.parametrize(
    "changes",
    [dict(p_remap_monotone=1.0), dict(p_gamma=1.0), dict(p_remap_monotone=1.0, p_gamma=1.0)],
)
def test_monotone_transforms_preserve_intensity_order(changes):
    img = _ramp()
    flat_in = img.flatten(1)
    out = apply_intensity(img, AugmentConfig(**changes), torch.Generator().manual_seed(3)).flatten(1)
    order = flat_in.argsort(1)
    assert torch.all(out.gather(1, order).diff(dim=1) >= -1e-6)
    assert not torch.allclose(out, flat_in, atol=1e-3)


def test_inversion_and_nonmonotone_remap():
    img = _ramp(batch=2)
    inv = apply_intensity(img, AugmentConfig(p_invert=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(inv, 1 - img)
    non = apply_intensity(img, AugmentConfig(p_remap_nonmonotone=1.0, remap_knots=8),
                          torch.Generator().manual_seed(0)).flatten(1)
    steps = non.diff(dim=1)
    assert (steps > 1e-7).any() and (steps < -1e-7).any()  # goes up and down


def test_blur_bias_lowres_noise_individually():
    g = torch.Generator().manual_seed(9)
    img = torch.zeros(2, 1, 16, 16, 16)
    img[:, :, 8, 8, 8] = 1.0
    blurred = apply_intensity(img, AugmentConfig(p_blur=1.0, blur_sigma=(1.0, 1.0)), g)
    assert blurred[0, 0, 8, 8, 8] < 1.0 and blurred.sum() > 0 and blurred[0, 0, 8, 8, 7] > 0
    ramp = _ramp(batch=2)
    for cfg in (AugmentConfig(p_bias=1.0), AugmentConfig(p_low_res=1.0), AugmentConfig(p_noise=1.0)):
        out = apply_intensity(ramp, cfg, g)
        assert out.shape == ramp.shape and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
        assert not torch.equal(out, ramp)


def test_presets():
    assert AugmentConfig.preset("baseline").rotation_deg == (5.0, 5.0, 5.0)
    assert AugmentConfig.preset("augdg").rotation_deg == (15.0, 15.0, 15.0)
    default = AugmentConfig.preset("default")
    assert default.elastic and default.has_intensity and default.scale == (0.9, 1.1) and not default.flip_lr
    spatial = AugmentConfig.preset("spatial")
    assert spatial.has_spatial and not spatial.has_intensity
    assert not AugmentConfig.preset("identity").has_spatial
    with pytest.raises(ValueError):
        AugmentConfig.preset("nope")
