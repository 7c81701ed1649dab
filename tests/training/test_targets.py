"""Targets: Gaussian heatmaps, boundary distance maps (EDT vs dilation), mask and Sobel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.targets import (
    boundary_distance_target,
    dilation_distance_target,
    gaussian_heatmaps,
    mask_target,
    points_inside,
    sobel_magnitude,
)


def _brute_gaussian(point, shape, sigma, peak=100.0, radius=3.0):
    d, h, w = shape
    k, j, i = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    diffs = [i - point[0], j - point[1], k - point[2]]
    out = peak * np.ones(shape)
    for diff, s in zip(diffs, sigma, strict=True):
        out *= np.exp(-0.5 * (diff / s) ** 2) * (np.abs(diff) <= radius * s)
    return out


def test_heatmap_axis_order_and_peak():
    shape = (20, 24, 28)  # D (z), H (y), W (x)
    pts = torch.tensor([[[5.0, 10.0, 15.0]]])  # (i, j, k)
    hm = gaussian_heatmaps(pts, shape, 2.0)
    assert hm.shape == (1, 1, *shape)
    idx = np.unravel_index(int(hm[0, 0].argmax()), shape)
    assert tuple(int(v) for v in idx) == (15, 10, 5)  # array index is (k, j, i)
    assert hm[0, 0, 15, 10, 5].item() == pytest.approx(100.0)


def test_heatmap_subvoxel_anisotropic_matches_formula():
    shape = (16, 18, 20)
    point = (7.3, 9.6, 4.25)
    sigma = (1.5, 2.0, 1.0)  # x, y, z voxels
    hm = gaussian_heatmaps(torch.tensor([[point]], dtype=torch.float64), shape, torch.tensor(sigma), peak=255.0)
    ref = _brute_gaussian(point, shape, sigma, peak=255.0)
    np.testing.assert_allclose(hm[0, 0].numpy(), ref, atol=1e-9)
    # box cut at 3 sigma: nothing beyond it on the x axis (sigma 1.5 -> |i - 7.3| <= 4.5)
    assert hm[0, 0, :, :, 12:].abs().max() == 0 and hm[0, 0, :, :, 2].abs().max() == 0
    assert hm[0, 0, :, :, 3].abs().max() > 0


def test_heatmap_outside_and_invalid_channels_are_zero():
    shape = (10, 10, 10)
    pts = torch.tensor([[[4.0, 4.0, 4.0], [-3.0, 4.0, 4.0], [4.0, 4.0, 9.6], [5.0, 5.0, 5.0], [float("nan")] * 3]])
    valid = torch.tensor([[True, True, True, False, True]])
    hm = gaussian_heatmaps(pts, shape, 1.0, valid=valid)
    assert hm.shape == (1, 5, *shape)
    assert hm[0, 0].max() > 0
    assert torch.all(hm[0, 1:] == 0)
    assert torch.isfinite(hm).all()
    assert points_inside(torch.tensor([[-0.5, 0.0, 9.5], [-0.51, 0.0, 0.0]]), shape).tolist() == [True, False]


def test_heatmap_batched_several_landmarks():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(3, 4, 3, generator=g) * 10 + 3
    hm = gaussian_heatmaps(pts, (16, 16, 16), 1.5)
    for b in range(3):
        for lm in range(4):
            ref = _brute_gaussian(pts[b, lm].double().numpy(), (16, 16, 16), (1.5,) * 3)
            np.testing.assert_allclose(hm[b, lm].numpy(), ref, atol=1e-3)


def _sphere(n=40, radius=10.0, centre=(19.3, 20.1, 19.7)):
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float64)] * 3, indexing="ij")
    r = np.sqrt((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2)
    return torch.from_numpy(r <= radius)[None, None], r


def test_boundary_target_values_on_a_cube():
    mask = torch.zeros(2, 1, 20, 20, 20, dtype=torch.bool)
    mask[0, 0, 5:15, 5:15, 5:15] = True  # item 1 empty: no boundary -> zeros
    t = boundary_distance_target(mask, max_dist=5.0)
    assert t.shape == mask.shape and t.dtype == torch.float32
    assert torch.all(t[1] == 0)
    assert t.min() >= 0 and t.max() <= 1
    shell = mask[0, 0].clone()
    shell[6:14, 6:14, 6:14] = False
    assert torch.all(t[0, 0][shell] == 1)
    assert t[0, 0, 10, 10, 9].item() == pytest.approx(0.2)  # 4 voxels inside (boundary planes 5 and 14)
    assert t[0, 0, 10, 10, 7].item() == pytest.approx(0.6)  # 2 voxels inside
    assert t[0, 0, 10, 10, 3].item() == pytest.approx(0.6)  # 2 voxels outside
    assert t[0, 0, 10, 10, 0].item() == 0  # beyond max_dist
    assert boundary_distance_target(mask, 5.0, scale=255.0)[0, 0, 10, 10, 7].item() == pytest.approx(153.0)


def test_boundary_target_edge_of_grid_is_not_a_boundary_and_spacing():
    mask = torch.zeros(1, 1, 12, 6, 6, dtype=torch.bool)
    mask[..., :6, :, :] = True  # half space z < 6, touching the grid's sides
    t = boundary_distance_target(mask, max_dist=4.0)
    assert torch.all(t[0, 0, 5] == 1) and torch.all(t[0, 0, 4] == 0.75)  # only the z = 5 plane is boundary
    assert torch.all(t[0, 0, 0] == 0)
    ts = boundary_distance_target(mask, max_dist=4.0, spacing=(1.0, 1.0, 2.0))  # (x, y, z) mm
    assert torch.all(ts[0, 0, 4] == 0.5) and torch.all(ts[0, 0, 7] == 0.0)


def test_edt_is_exact_distance_to_boundary_voxels():
    mask, _ = _sphere(n=24, radius=6.0, centre=(11.2, 12.4, 11.7))
    t = boundary_distance_target(mask, max_dist=5.0)
    d = 5.0 - 5.0 * t[0, 0].double().numpy()
    from training.targets import _boundary

    b = np.argwhere(_boundary(mask)[0, 0].numpy())
    grid = np.argwhere(np.ones(mask.shape[2:], dtype=bool))
    brute = np.sqrt(((grid[:, None, :] - b[None]) ** 2).sum(-1)).min(1).reshape(mask.shape[2:])
    np.testing.assert_allclose(d, np.minimum(brute, 5.0), atol=1e-5)


def test_sphere_edt_matches_analytic_distance_dilation_does_not():
    mask, r = _sphere()
    edt = 5.0 - 5.0 * boundary_distance_target(mask, max_dist=5.0)[0, 0].double().numpy()
    dil = 5.0 - 5.0 * dilation_distance_target(mask, max_dist=5)[0, 0].double().numpy()
    # boundary voxels sit at radii in (R - 1, R]: the discrete surface is at about R - 0.5
    analytic = np.abs(r - 9.5)
    band = analytic <= 4.0
    err_edt = np.abs(edt - analytic)[band]
    err_dil = np.abs(dil - analytic)[band]
    assert np.percentile(err_edt, 95) <= 0.5
    assert err_edt.max() <= 0.85  # worst cases: lattice gaps in the one-voxel-thick shell
    assert err_edt.mean() <= 0.25
    assert err_dil.max() > 1.5  # chessboard distance along the diagonals: d / sqrt(3)
    # both agree on the boundary itself and both saturate far from it
    assert np.all(edt[dil == 0] == 0)
    far = (r < 3.0) | (r > 16.0)
    assert np.all(edt[far] >= 5.0)


def test_mask_target():
    m = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    m[0, 0, 1, 2, 3] = True
    t = mask_target(m, scale=255.0)
    assert t.dtype == torch.float32 and t.sum().item() == 255.0 and t[0, 0, 1, 2, 3] == 255.0


def test_sobel_magnitude_step_edge():
    img = torch.zeros(2, 1, 10, 10, 10)
    img[0, 0, :, :, 5:] = 1.0  # step along x
    s = sobel_magnitude(img)
    assert s.shape == img.shape
    assert s[0].max().item() == pytest.approx(1.0) and s[0].min().item() == 0.0
    assert torch.all(s[0, 0, :, :, 4:6] == 1.0)  # the two voxels either side of the step
    assert torch.all(s[0, 0, :, :, :3] == 0) and torch.all(s[0, 0, :, :, 7:] == 0)
    assert torch.all(s[1] == 0)  # constant image: no edges, no NaN
    assert math.isfinite(float(s.sum()))
