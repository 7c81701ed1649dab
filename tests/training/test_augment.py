"""Augmentation: geometry checked with bright blobs at landmarks, intensity invariants, determinism."""

from __future__ import annotations

import pytest
import torch

from training.augment import (
    AugmentConfig,
    apply_intensity,
    apply_spatial,
    augment_batch,
    identity_transform,
    random_spatial_transform,
    sampling_grid,
    transform_points,
)
from training.targets import gaussian_heatmaps

N = 40
SHAPE = (N, N, N)


def _centroid(image: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centroid (i, j, k) of every channel: [B, C, 3]."""
    k, j, i = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in image.shape[-3:]], indexing="ij")
    w = image.double().clamp_min(0)
    total = w.sum((-3, -2, -1))
    return torch.stack([(w * c).sum((-3, -2, -1)) / total for c in (i, j, k)], -1)


def _blobs(seed: int, batch: int = 3, landmarks: int = 4, sigma: float = 1.2):
    """One small Gaussian blob per channel, centred on a sub-voxel landmark near the middle."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(batch, landmarks, 3, generator=g) * 14 + 13
    return gaussian_heatmaps(pts, SHAPE, sigma, peak=1.0), pts, g


@pytest.mark.parametrize("seed", [0, 1])
def test_affine_moves_image_and_landmarks_together(seed):
    image, pts, g = _blobs(seed)
    cfg = AugmentConfig(rotation_deg=(20.0, 20.0, 20.0), scale=(0.85, 1.15), translation_mm=4.0)
    out = augment_batch(image, pts, cfg, g, spacing=(1.0, 1.0, 1.0))
    assert not torch.allclose(out.points_vox, pts, atol=0.5)  # it did move
    err = (_centroid(out.image) - out.points_vox.double()).norm(dim=-1)
    assert err.max() < 0.5, err
    assert out.valid.all()


def test_affine_with_anisotropic_spacing():
    image, pts, g = _blobs(2, batch=2, landmarks=3, sigma=1.5)
    cfg = AugmentConfig(rotation_deg=(15.0, 15.0, 15.0), scale=(0.9, 1.1), translation_mm=3.0)
    out = augment_batch(image, pts, cfg, g, spacing=(1.0, 1.2, 0.8))
    err = (_centroid(out.image) - out.points_vox.double()).norm(dim=-1)
    assert err.max() < 0.5, err


@pytest.mark.parametrize("seed", [0, 3])
def test_elastic_moves_image_and_landmarks_together(seed):
    image, pts, g = _blobs(seed, sigma=1.0)
    cfg = AugmentConfig(rotation_deg=(10.0, 10.0, 10.0), scale=(0.9, 1.1), translation_mm=3.0,
                        elastic=True, elastic_magnitude_mm=1.0, elastic_grid=5)
    tr = random_spatial_transform(image.shape[0], SHAPE, cfg, g)
    assert tr.elastic is not None and tr.elastic.abs().max() > 0.5
    moved, residual = transform_points(pts, tr, return_residual=True)
    assert residual.shape == pts.shape[:2] and residual.max() < 1e-3
    # inverse consistency: the sampling map sends the moved landmark back to the original one
    p = moved.double()
    from training.augment import _elastic_at

    back = (p + _elastic_at(tr.elastic.double(), p, SHAPE)) @ tr.matrix[..., :3].double().transpose(1, 2)
    back = back + tr.matrix[..., 3].double()[:, None]
    assert (back - pts.double()).norm(dim=-1).max() < 1e-3
    err = (_centroid(apply_spatial(image, tr)) - moved.double()).norm(dim=-1)
    assert err.max() < 1.0, err


def test_identity_config_returns_input_unchanged():
    image, pts, g = _blobs(4)
    masks = image > 0.5
    out = augment_batch(image, pts, AugmentConfig.preset("identity"), g, masks=masks)
    assert torch.equal(out.image, image) and torch.equal(out.points_vox, pts) and torch.equal(out.masks, masks)
    # the identity transform itself resamples to the same values
    tr = identity_transform(image.shape[0], SHAPE)
    torch.testing.assert_close(apply_spatial(image, tr), image, atol=1e-5, rtol=0)
    torch.testing.assert_close(transform_points(pts, tr), pts)


def test_masks_nearest_and_points_leaving_the_grid_are_flagged():
    image, pts, g = _blobs(5, batch=2, landmarks=2)
    pts[0, 1] = torch.tensor([1.0, 20.0, 20.0])  # near the x edge: a big shift pushes it out
    masks = torch.zeros(2, 1, *SHAPE, dtype=torch.bool)
    masks[..., 10:30, 10:30, 10:30] = True
    cfg = AugmentConfig(translation_mm=8.0)
    out = augment_batch(image, pts, cfg, torch.Generator().manual_seed(11), masks=masks)
    assert out.masks.dtype == torch.bool and out.masks.shape == masks.shape
    inside = ((out.points_vox >= -0.5) & (out.points_vox <= N - 0.5)).all(-1)
    assert torch.equal(out.valid, inside)
    # nearest resampling of a pure translation keeps the cube's size (voxel count within rounding)
    assert abs(int(out.masks[1].sum()) - 20**3) <= 3 * 20 * 20
    invalid = augment_batch(image, pts, cfg, torch.Generator().manual_seed(11),
                            valid=torch.tensor([[True, True], [False, True]]))
    assert not invalid.valid[1, 0]


def test_flip_needs_permutation_and_swaps_landmarks():
    image, pts, g = _blobs(6, batch=2, landmarks=2)
    with pytest.raises(ValueError, match="lr_permutation"):
        random_spatial_transform(2, SHAPE, AugmentConfig(flip_lr=True), g)
    cfg = AugmentConfig(flip_lr=True, p_flip=1.0, lr_permutation=(1, 0))
    out = augment_batch(image, pts, cfg, g)
    # landmark 0 now sits where the blob of (old) landmark 1 went, mirrored in x
    c = _centroid(out.image)
    torch.testing.assert_close(out.points_vox.double(), c[:, [1, 0]], atol=0.05, rtol=0)
    torch.testing.assert_close(out.points_vox[:, 0, 0], N - 1 - pts[:, 1, 0])


def test_spatial_determinism():
    image, pts, _ = _blobs(7)
    cfg = AugmentConfig.preset("spatial").with_(p_elastic=1.0)
    a = augment_batch(image, pts, cfg, torch.Generator().manual_seed(42))
    b = augment_batch(image, pts, cfg, torch.Generator().manual_seed(42))
    c = augment_batch(image, pts, cfg, torch.Generator().manual_seed(43))
    assert torch.equal(a.image, b.image) and torch.equal(a.points_vox, b.points_vox)
    assert not torch.equal(a.points_vox, c.points_vox)


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


def test_sampling_grid_is_xyz_normalised():
    tr = identity_transform(1, (4, 5, 6))
    grid = sampling_grid(tr)
    assert grid.shape == (1, 4, 5, 6, 3)
    torch.testing.assert_close(grid[0, 0, 0, 0], torch.tensor([-1.0, -1.0, -1.0]))
    torch.testing.assert_close(grid[0, 3, 0, 5], torch.tensor([1.0, -1.0, 1.0]))  # x = i last, z = k first
