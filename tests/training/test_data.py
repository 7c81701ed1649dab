"""Datasets (folder, manifest, seed layout, segmentation pairs), label specs and the content-keyed cache.

Also holds the tiny phantom writers the other training tests import.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import Landmarks, Volume, write_landmarks, write_volume
from napari_dglandmark.io.volume import Geometry
from napari_dglandmark.model.single_stage import SingleStageConfig
from training.data import (
    Cache,
    LabelSpec,
    find_landmark_cases,
    find_segmentation_cases,
    landmark_names_of,
    load_landmark_cases,
    load_segmentation_cases,
    split_cases,
)

NAMES = ["AC", "PC", "LE"]
SIZE = 24


def phantom(seed: int, size: int = SIZE, spacing=(1.0, 1.1, 0.9)) -> tuple[Volume, Landmarks, np.ndarray]:
    """A noisy ball ("head") with three bright blobs (landmarks) at seeded positions; returns (volume, landmarks, label)."""
    rng = np.random.default_rng(seed)
    geom = Geometry(shape=(size, size, size), spacing=tuple(spacing), origin=(-10.0, 5.0, 2.0))
    k, j, i = np.meshgrid(*(np.arange(size),) * 3, indexing="ij")
    c = (size - 1) / 2
    r = np.sqrt((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2)
    label = (r < size * 0.38).astype(np.uint8) * 200
    arr = 40.0 * (label > 0) + rng.normal(0, 3, label.shape)
    base = np.array([[c - 5, c, c], [c + 5, c, c], [c, c - 5, c + 3]])
    idx = base + rng.uniform(-1.5, 1.5, base.shape)
    for p in idx:
        arr += 120.0 * np.exp(-((i - p[0]) ** 2 + (j - p[1]) ** 2 + (k - p[2]) ** 2) / (2 * 1.2**2))
    vol = Volume(arr.astype(np.float32), geom)
    return vol, Landmarks(NAMES, geom.index_to_physical(idx)), label


def make_landmark_dataset(root: Path, n: int = 3, suffix: str = ".fcsv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        vol, lms, _ = phantom(s)
        write_volume(vol, root / f"case{s}.nii.gz")
        write_landmarks(root / f"case{s}{suffix}", lms)
    return root


def make_segmentation_dataset(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        vol, _, label = phantom(100 + s)
        write_volume(vol, root / f"seg{s}.nii.gz")
        write_volume(Volume(label, vol.geometry), root / f"seg{s}_label.nii.gz")
    return root


def test_folder_pairs_by_stem(tmp_path):
    root = make_landmark_dataset(tmp_path / "d", n=2)
    vol, lms, _ = phantom(7)
    write_volume(vol, root / "other.nii.gz")
    write_landmarks(root / "other.mrk.json", lms)
    write_volume(vol, root / "lonely.nii.gz")  # no landmarks: not a case
    items = find_landmark_cases(root)
    assert [it.name for it in items] == ["case0", "case1", "other"]
    assert items[2].landmarks.name == "other.mrk.json"
    assert landmark_names_of(items) == NAMES


def test_manifest_relative_paths(tmp_path):
    make_landmark_dataset(tmp_path / "data", n=2, suffix=".csv")
    manifest = tmp_path / "list.csv"
    manifest.write_text("image,landmarks\ndata/case1.nii.gz,data/case1.csv\ndata/case0.nii.gz,data/case0.csv\n")
    items = find_landmark_cases(manifest)
    assert [it.image.name for it in items] == ["case1.nii.gz", "case0.nii.gz"]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,landmarks\ndata/nope.nii.gz,data/case0.csv\n")
    with pytest.raises(DGLandmarkError, match="does not exist"):
        find_landmark_cases(bad)


def test_seed_layout(tmp_path):
    vol, lms, _ = phantom(3)
    case = tmp_path / "seed" / "fetus01"
    case.mkdir(parents=True)
    write_volume(vol, case / "image.nii.gz")
    two = Landmarks(["TCD-1", "TCD-2"], lms.positions[:2])
    write_landmarks(case / "TCD.mrk.json", two, measurements=[("TCD", "TCD-1", "TCD-2")])
    items = find_landmark_cases(tmp_path / "seed")
    assert len(items) == 1 and items[0].landmarks == case
    cases = load_landmark_cases(items, ["TCD-1", "TCD-2"], SingleStageConfig(grid_size=(16, 16, 16)),
                                Cache(tmp_path / "cache"))
    np.testing.assert_allclose(cases[0].truth, lms.positions[:2], atol=1e-3)


def test_no_pairs_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DGLandmarkError, match="no \\(image, landmarks\\) pairs"):
        find_landmark_cases(tmp_path / "empty")
    with pytest.raises(DGLandmarkError, match="no such"):
        find_landmark_cases(tmp_path / "absent")


def test_segmentation_pairs_and_labels(tmp_path):
    root = make_segmentation_dataset(tmp_path / "seg")
    items = find_segmentation_cases(root)
    assert [(it.name, it.label.name) for it in items] == [("seg0", "seg0_label.nii.gz"), ("seg1", "seg1_label.nii.gz")]
    label = np.array([0, 1, 2, 3, 200])
    assert LabelSpec.parse("1,3").mask(label).tolist() == [False, True, False, True, False]
    assert LabelSpec.parse(">127").mask(label).tolist() == [False, False, False, False, True]
    assert LabelSpec.parse(None).mask(label).tolist() == [False, True, True, True, True]
    with pytest.raises(DGLandmarkError):
        LabelSpec.parse(">x")
    cases = load_segmentation_cases(items, LabelSpec.parse(">127"), SingleStageConfig(grid_size=(16, 12, 16)),
                                    Cache(tmp_path / "cache"))
    assert tuple(cases[0].mask.shape) == (16, 12, 16) and cases[0].mask.any()
    with pytest.raises(DGLandmarkError, match="matches --labels"):
        load_segmentation_cases(items, LabelSpec.parse("7"), SingleStageConfig(grid_size=(16, 16, 16)),
                                Cache(tmp_path / "cache"))


def test_cache_keyed_by_content_and_settings(tmp_path):
    root = make_landmark_dataset(tmp_path / "d", n=1)
    cache = Cache(tmp_path / "cache")
    items = find_landmark_cases(root)
    cfg = SingleStageConfig(grid_size=(16, 16, 16))
    first = load_landmark_cases(items, NAMES, cfg, cache)[0]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and any(e.endswith(".image.npy") for e in entries)
    meta = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert meta["settings"]["grid_size"] == [16, 16, 16]
    # A cache hit gives the same arrays, and no pickle is involved (np.load refuses object arrays).
    again = load_landmark_cases(items, NAMES, cfg, cache)[0]
    assert np.array_equal(first.image.numpy(), again.image.numpy())
    assert len(list((tmp_path / "cache").iterdir())) == 2
    load_landmark_cases(items, NAMES, SingleStageConfig(grid_size=(16, 16, 12)), cache)  # other settings
    assert len(list((tmp_path / "cache").iterdir())) == 4
    vol, _, _ = phantom(42)
    write_volume(vol, items[0].image)  # other content, same name
    load_landmark_cases(find_landmark_cases(root), NAMES, cfg, Cache(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").iterdir())) == 6


def test_truth_on_the_model_grid(tmp_path):
    """The grid index of the truth lands on the blob in the resized image (geometry is consistent)."""
    root = make_landmark_dataset(tmp_path / "d", n=1)
    case = load_landmark_cases(find_landmark_cases(root), NAMES, SingleStageConfig(grid_size=(SIZE,) * 3),
                               Cache(tmp_path / "c"))[0]
    for p in case.points:
        i, j, k = np.round(p).astype(int)
        assert case.image[k, j, i] > 0.9


def test_split_cases():
    train, val = split_cases(list(range(10)), 0.2, seed=1)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert split_cases([1], 0.2, 0) == ([1], [1])
