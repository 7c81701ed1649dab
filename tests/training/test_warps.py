"""Spatial augmentation (``training.warps``): bright blobs at landmarks must land where the landmarks go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.model.pipeline import PipelineConfig
from napari_dglandmark.model.resample import grid_points
from training.augment import AugmentConfig
from training.config import preset
from training.data import LandmarkCase
from training.detector import DetectorRecipe, DetectorTrainer, landmark_case, segmentation_case
from training.loop import LandmarkTask
from training.warps import (
    SpatialConfig,
    Warp,
    axis_rotation,
    random_warp,
    warp_items,
    warp_landmarks,
    warp_volume,
)

N = 40
OBLIQUE = axis_rotation((20.0, -10.0, 35.0)) @ np.diag([-1.0, -1.0, 1.0])
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i along P, j along S, k along L


def _grid(spacing=(1.0, 1.0, 1.0), direction=None, n: int = N) -> Geometry:
    return Geometry((n, n, n), spacing, (3.0, -7.0, 11.0), np.eye(3) if direction is None else direction)


def _blobs(grid: Geometry, seed: int, landmarks: int = 3, sigma_mm: float = 1.5):
    """One Gaussian blob (isotropic in mm) per landmark, each in its own image; landmarks near the middle."""
    rng = np.random.default_rng(seed)
    index = rng.uniform(14, 26, size=(landmarks, 3))
    lps = grid.index_to_physical(index)
    pts = grid_points(grid).double()
    images = [torch.exp(-((pts - torch.as_tensor(p)) ** 2).sum(-1) / (2 * sigma_mm**2)).float() for p in lps]
    return images, lps


def _centroid_lps(image: torch.Tensor, grid: Geometry) -> np.ndarray:
    """Intensity-weighted centroid of [.., D, H, W] in LPS mm."""
    w = image.reshape(-1).double().clamp_min(0)
    pts = grid_points(grid).reshape(-1, 3).double()
    return ((pts * w[:, None]).sum(0) / w.sum()).numpy()


def _warp_blobs(grid: Geometry, config: SpatialConfig, seed: int, landmarks: int = 3, sigma_mm: float = 1.5):
    """Centroid error (mm) of every moved blob against its moved landmark, and the moved landmarks."""
    images, lps = _blobs(grid, seed, landmarks, sigma_mm)
    warp = random_warp(grid, config, np.random.default_rng(100 + seed))
    moved = warp_landmarks(lps, warp, config.lr_permutation)
    found = np.stack([_centroid_lps(warp_volume(im, grid, warp), grid) for im in images])
    return np.linalg.norm(found - moved, axis=1), lps, moved, warp


@pytest.mark.parametrize("seed", [0, 1])
def test_affine_moves_image_and_landmarks_together(seed):
    cfg = SpatialConfig(rotation_deg=(20.0, 20.0, 20.0), scale=(0.85, 1.15), translation_mm=4.0)
    err, lps, moved, _ = _warp_blobs(_grid(), cfg, seed)
    assert np.abs(moved - lps).max() > 1.0  # it did move
    assert err.max() < 0.3, err


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axial", "oblique"])
def test_anisotropic_oblique_grid_is_handled_in_mm(direction):
    grid = _grid((1.0, 1.25, 0.8), direction)
    cfg = SpatialConfig(rotation_deg=(25.0, 25.0, 25.0), translation_mm=3.0)
    err, lps, moved, warp = _warp_blobs(grid, cfg, 2, landmarks=4)
    assert err.max() < 0.3, err
    # a rotation in mm keeps every distance in mm (in voxels of an anisotropic grid it would not)
    dist = np.linalg.norm(lps[:, None] - lps[None], axis=-1)
    torch.testing.assert_close(np.linalg.norm(moved[:, None] - moved[None], axis=-1), dist, atol=1e-6, rtol=0)
    assert abs(np.linalg.det(warp.affine[:3, :3]) - 1) < 1e-9


def test_ranges_rotation_degrees_zoom_and_translation_mm():
    grid = _grid((1.0, 1.25, 0.8), OBLIQUE)
    # rotation: uniform +-deg about each grid axis, here only the grid's x (i) axis
    angles = []
    for seed in range(200):
        warp = random_warp(grid, SpatialConfig(rotation_deg=(12.0, 0.0, 0.0)), np.random.default_rng(seed))
        local = OBLIQUE.T @ warp.affine[:3, :3] @ OBLIQUE  # the rotation in the grid's own axes
        np.testing.assert_allclose(local[:, 0], [1.0, 0.0, 0.0], atol=1e-12)  # about i only
        angles.append(np.degrees(np.arctan2(local[2, 1], local[1, 1])))
    assert max(np.abs(angles)) <= 12.0 and max(angles) > 11.0 and min(angles) < -11.0
    # zoom above 1 enlarges the content: distances between landmarks grow by the zoom
    _, lps = _blobs(grid, 3)
    warp = random_warp(grid, SpatialConfig(scale=(1.25, 1.25)), np.random.default_rng(0))
    moved = warp_landmarks(lps, warp)
    ratio = np.linalg.norm(moved[0] - moved[1]) / np.linalg.norm(lps[0] - lps[1])
    assert ratio == pytest.approx(1.25, abs=1e-9)
    # translation: +-mm along each grid axis, the same for every point
    shifts = []
    for seed in range(200):
        warp = random_warp(grid, SpatialConfig(translation_mm=5.0), np.random.default_rng(seed))
        moved = warp_landmarks(lps, warp)
        np.testing.assert_allclose(moved - moved[0], lps - lps[0], atol=1e-9)
        shifts.append(OBLIQUE.T @ (lps[0] - moved[0]))  # where it samples, along the grid axes, in mm
    shifts = np.array(shifts)
    assert np.abs(shifts).max() <= 5.0 and (np.abs(shifts).max(0) > 4.5).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_elastic_moves_image_and_landmarks_together(seed):
    grid = _grid((1.0, 1.1, 0.9))
    cfg = SpatialConfig(rotation_deg=(10.0, 10.0, 10.0), scale=(0.9, 1.1), translation_mm=3.0,
                        elastic=True, elastic_magnitude_mm=1.5, elastic_grid=5)
    err, lps, moved, warp = _warp_blobs(grid, cfg, seed, sigma_mm=1.0)
    assert warp.elastic is not None and np.abs(warp.elastic.control.numpy()).max() > 1.0
    # the sampling map sends each moved landmark back to the original one
    back = moved @ warp.affine[:3, :3].T + warp.affine[:3, 3] + warp.elastic.at_index(grid.physical_to_index(moved))
    assert np.linalg.norm(back - lps, axis=1).max() < 1e-3
    assert err.max() < 0.5, err
    affine_only = warp_landmarks(lps, Warp(grid, warp.affine))  # the elastic part matters here
    assert np.linalg.norm(affine_only - moved, axis=1).max() > 1.0


def test_identity_is_identity():
    grid = _grid((1.0, 1.2, 0.9), OBLIQUE)
    images, lps = _blobs(grid, 4, landmarks=2)
    masks = [im > 0.5 for im in images]
    x, m, p = warp_items(images, [grid, grid], AugmentConfig.preset("identity"), np.random.default_rng(0),
                         masks=masks, points_lps=[lps, lps])
    assert torch.equal(x[:, 0], torch.stack(images)) and torch.equal(m[:, 0], torch.stack(masks))
    torch.testing.assert_close(p, torch.as_tensor(grid.physical_to_index(lps), dtype=torch.float32).expand(2, -1, -1))
    # the identity warp itself resamples to the same values and leaves points where they are
    warp = Warp(grid, np.eye(4))
    torch.testing.assert_close(warp_volume(images[0], grid, warp)[0, 0], images[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(warp_landmarks(lps, warp), lps, atol=1e-9)


def test_masks_nearest_keep_their_type():
    grid = _grid()
    mask = torch.zeros(N, N, N, dtype=torch.bool)
    mask[10:30, 10:30, 10:30] = True
    labels = mask.to(torch.uint8) * 3
    _, m, _ = warp_items([mask.float()], [grid], SpatialConfig(translation_mm=6.0), np.random.default_rng(1),
                         masks=[mask])
    assert m.dtype == torch.bool and m.shape == (1, 1, N, N, N)
    assert abs(int(m.sum()) - 20**3) <= 3 * 20 * 20  # a translation keeps the cube's size
    out = warp_volume(labels, grid, random_warp(grid, SpatialConfig(translation_mm=6.0), np.random.default_rng(1)),
                      mode="nearest")
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) == {0, 3}


@pytest.mark.parametrize("direction", [None, SAGITTAL], ids=["axial", "sagittal"])
def test_flip_mirrors_left_right_and_swaps_landmarks(direction):
    grid = _grid(direction=direction)
    with pytest.raises(ValueError, match="lr_permutation"):
        random_warp(grid, SpatialConfig(flip_lr=True), np.random.default_rng(0))
    cfg = SpatialConfig(flip_lr=True, p_flip=1.0, lr_permutation=(1, 0))
    images, lps = _blobs(grid, 6, landmarks=2)
    warp = random_warp(grid, cfg, np.random.default_rng(0))
    moved = warp_landmarks(lps, warp, cfg.lr_permutation)
    assert warp.flipped
    # landmark 0 now sits where the blob of (old) landmark 1 went: mirrored in LPS x about the grid centre
    found = np.stack([_centroid_lps(warp_volume(im, grid, warp), grid) for im in images])
    assert np.linalg.norm(found[[1, 0]] - moved, axis=1).max() < 0.3
    assert np.linalg.norm(found - moved, axis=1).min() > 1.0
    centre = grid.index_to_physical((np.array(grid.size) - 1) / 2)
    np.testing.assert_allclose(moved[0], [2 * centre[0] - lps[1, 0], lps[1, 1], lps[1, 2]], atol=1e-9)


def test_determinism_with_a_seed():
    grid = _grid((1.0, 1.2, 0.9))
    images, lps = _blobs(grid, 7, landmarks=2)
    cfg = AugmentConfig.preset("spatial").with_(p_elastic=1.0)

    def run(seed):
        return warp_items(images, [grid, grid], cfg, np.random.default_rng(seed), points_lps=[lps, lps])

    a, b, c = run(42), run(42), run(43)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[2], c[2])
    assert not torch.equal(a[2][0], a[2][1])  # one draw per item


def test_loop_sampler_targets_follow_the_image():
    """The single-network task's heatmap peaks sit on the warped image's blobs."""
    grid = _grid((1.0, 1.2, 0.9), OBLIQUE, n=32)
    images, lps = _blobs(grid, 8, landmarks=1, sigma_mm=1.5)
    case = LandmarkCase("blob", images[0], grid, ["a"], lps)
    cfg = preset("paper").updated({"rotation_deg": 20.0, "sigma_vox": 1.5, "grid_size": 32})
    x, target = LandmarkTask([case], [], cfg).batch(np.random.default_rng(5), torch.Generator(), 3, 0)
    assert x.shape == target.shape == (3, 1, 32, 32, 32)
    assert not torch.allclose(x[0], x[1])
    for item in range(3):
        dist = np.linalg.norm(_centroid_lps(x[item], grid) - _centroid_lps(target[item], grid))
        assert dist < 0.5, (item, dist)


# Detector batches with a fixed seed, recorded before the spatial path moved to ``training.warps``
# (commit 76183f9): the two-stage recipe's sampling must not change.
DETECTOR_REFERENCE = {
    "coarse0": [3335.675229, 1646.581785, [[4.05378, 16.5065, 11.99134], [0.79996, 11.37047, 4.99349]],
                [[7.94790, 8.25744, 13.05319], [5.36755, 4.34210, 6.16665]]],
    "fine0": [3630.944322, 1365.86086, [2.50147, 5.80926, 7.04727], [5.01878, 4.59890, 7.43432],
              [4.68267, 5.18712, 6.25320], 0, 0, 1],
    "pre_coarse": [2576.589374, 1144.96081, 6612.156695, 2928.044435],
    "pre_fine": [2252.535836, 911.779599, 2418.876463, 1103.95],
    "coarse1": [1892.572826, 872.019111, [[7.93450, 15.10097, 10.90625], [5.95831, 10.63623, 5.50896]],
                [[10.59291, 13.63342, 10.27144], [8.63078, 9.47534, 5.23250]]],
    "fine1": [3403.96803, 1339.061375, [5.90443, 5.86534, 3.99653], [4.49484, 9.5, 3.96804],
              [5.46081, 5.57912, 3.39160], 0, 0, 1],
}


def _summary(t: torch.Tensor) -> list[float]:
    t = t.double()
    w = torch.linspace(0, 1, t.numel(), dtype=torch.float64).view_as(t)
    return [float(t.sum()), float((t * w).sum())]


def test_detector_sampling_is_unchanged():
    arr = np.full((40, 40, 40), 10.0, np.float32)
    arr[8:32, 10:30, 9:31] = 200.0
    arr[18:22, 18:22, 12:16] = 600.0
    geom = Geometry(arr.shape, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    lms = Landmarks(["marker", "corner"], geom.index_to_physical(np.array([[13.5, 19.5, 19.5], [9.0, 10.0, 8.0]])))
    volume = Volume(arr, geom, "phantom.nii.gz")
    got = {}
    for realistic in (0, 1):
        recipe = DetectorRecipe(
            pipeline=PipelineConfig(coarse_spacing=4.0, coarse_size=(24, 24, 24), fine_spacing=2.0,
                                    fine_size=(12, 12, 12), fine_iterations=1),
            coarse_net=dict(name="resunet3d", base_width=4, depth=2, blocks_per_stage=1),
            fine_net=dict(name="resunet3d", base_width=4, depth=1, blocks_per_stage=1),
            batch_coarse=2, batch_fine=3, rotation_deg=12.0, elastic_mm=2.0, intensity="none", p_head_invert=0.0,
            p_large_rotation=0.5 * realistic, seed=3)
        trainer = DetectorTrainer(recipe, lms.names)
        case = landmark_case(volume, lms, lms.names, recipe.pipeline)
        x, p = trainer.coarse_batch([case])
        got[f"coarse{realistic}"] = _summary(x) + p.tolist()
        x, p, ch = trainer.fine_batch([case])
        got[f"fine{realistic}"] = _summary(x) + p.tolist() + ch.tolist()
        if not realistic:
            seg = segmentation_case(volume, arr > 100, recipe)
            x, t = trainer.coarse_batch([seg], with_boundary=True)
            got["pre_coarse"] = _summary(x) + _summary(t)
            x, t = trainer.fine_batch([seg], with_boundary=True)
            got["pre_fine"] = _summary(x) + _summary(t)
    for key, want in DETECTOR_REFERENCE.items():
        np.testing.assert_allclose(np.hstack([np.ravel(v) for v in got[key]]),
                                   np.hstack([np.ravel(v) for v in want]), rtol=1e-5, atol=2e-4, err_msg=key)
