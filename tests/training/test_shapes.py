"""Real people's geometry: reading afids-shapes by AFID number, exact TPS warps, rotated copies."""

from __future__ import annotations

import numpy as np
import torch

from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry, Volume
from tests.conftest import SHARED_DATA, require_shared
from training.shapes import landmark_warp, read_subjects, split_subjects, to_template_frame
from training.synth import rotated_copy, warped_to_shape


def test_tps_warp_is_exact_at_the_landmarks_and_a_similarity_far_away():
    rng = np.random.default_rng(0)
    source = rng.normal(scale=30, size=(32, 3))
    target = 0.9 * source + rng.normal(scale=3, size=(32, 3))
    warp = landmark_warp(target, source)
    assert np.abs(warp(target).numpy() - source).max() < 0.02  # evaluated in float32
    far = target.mean(0) + np.array([[300.0, 0, 0]])
    assert np.linalg.norm(warp(far).numpy() - (far - target.mean(0)) / 0.9 - source.mean(0)) < 15


def _dot_volume():
    arr = np.zeros((40, 40, 40), np.float32)
    arr[24:27, 14:17, 19:22] = 1000.0  # a bright 3-voxel cube at index (20, 15, 25)
    geom = Geometry(arr.shape, (2.0, 2.0, 2.0), (-40.0, -40.0, -40.0), np.eye(3))
    index = np.array([[20.0, 15.0, 25.0], [10.0, 10.0, 10.0], [30.0, 10.0, 12.0], [12.0, 30.0, 30.0]])
    lms = Landmarks(["dot", "a", "b", "c"], geom.index_to_physical(index))
    return Volume(arr, geom, "dot.nii.gz"), lms


def _bright_centre(volume: Volume) -> np.ndarray:
    k, j, i = np.nonzero(volume.array > 0.5 * volume.array.max())
    w = volume.array[k, j, i]
    return volume.index_to_physical(np.stack([i, j, k], 1).T.dot(w)[None] / w.sum())[0]


def test_rotated_copy_moves_the_landmarks_with_the_image():
    volume, lms = _dot_volume()
    for axis, angle in ((0, 45.0), (1, -30.0), (2, 40.0)):
        out, moved = rotated_copy(volume, lms, axis, angle, pad_mm=20)
        assert np.linalg.norm(_bright_centre(out) - moved.get("dot")) < 0.5
        assert np.linalg.norm(moved.get("dot") - lms.get("dot")) > 5  # it did move


def test_warped_to_shape_puts_the_anatomy_on_the_target():
    volume, lms = _dot_volume()
    target = lms.positions.copy()
    target[0] += np.array([6.0, -4.0, 2.0])
    out, moved, _ = warped_to_shape(volume, lms, target)
    assert np.allclose(moved.positions, target)
    assert np.linalg.norm(_bright_centre(out) - target[0]) < 1.0


def test_subjects_read_by_afid_number_and_split():
    from napari_dglandmark.io import read_landmarks
    from napari_dglandmark.protocols import load_protocol

    protocol = load_protocol("afids32")
    subjects = read_subjects(require_shared(SHARED_DATA / "afids-shapes"), protocol.names)
    assert len(subjects) == 60 and all(np.isfinite(s.positions).all() for s in subjects)  # OASIS too
    train, held = split_subjects(subjects)
    assert len(train) == 50 and len(held) == 10 and not {s.name for s in train} & {s.name for s in held}
    truth = protocol.conform(read_landmarks(SHARED_DATA / "afids-mni2009c" /
                                            "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"))
    frame = to_template_frame(held[-1], truth.positions)  # an OASIS subject tilted in the scanner
    assert np.isfinite(frame).all() and np.linalg.norm(frame - truth.positions, axis=1).mean() < 8
    assert torch.is_tensor(landmark_warp(frame, truth.positions)(frame))
