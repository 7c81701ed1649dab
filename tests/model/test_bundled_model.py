"""The shipped default model on the shipped sample: accuracy, sides, speed-relevant settings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.model.checkpoint import read_metadata
from napari_dglandmark.model.inference import Detector, bundled_models
from napari_dglandmark.protocols import load_protocol


@pytest.fixture(scope="module")
def detector():
    if "afids32" not in bundled_models():
        pytest.fail("the default model afids32 is not bundled")
    return Detector("afids32", device="cpu")


def test_default_model_is_small_and_self_describing():
    path = bundled_models()["afids32"]
    assert path.stat().st_size < 20e6
    meta = read_metadata(path)
    assert meta["protocol"] == "afids32" and meta["landmark_names"] == list(load_protocol("afids32").names)
    for key in ("pipeline", "training", "method", "data", "provenance", "metrics"):
        assert key in meta, key


def test_default_model_finds_the_sample_landmarks(detector):
    from importlib import resources

    root = resources.files("napari_dglandmark") / "sample_data"
    volume = read_volume(str(root / "afids_t1w_2mm.nii.gz"))
    truth = load_protocol("afids32").conform(read_landmarks(str(root / "afids_t1w_2mm_groundtruth.mrk.json")))
    pred = detector.detect(volume)
    err = np.linalg.norm(pred.positions - truth.positions, axis=1)
    assert err.mean() < 1.0 and err.max() < 2.5, err  # the sample is the training template at 2 mm
    assert (pred.confidence > 0.3).all()
    for right, left in load_protocol("afids32").bilateral_pairs:
        assert pred.get(right)[0] < pred.get(left)[0]  # R lies at smaller LPS x than L
