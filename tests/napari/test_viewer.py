"""Readers, writers and world coordinates in a real napari viewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark._reader import napari_get_reader
from napari_dglandmark._sample_data import SAMPLE_LANDMARKS, SAMPLE_VOLUME, afids_t1w
from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.layers import volume_from_image_layer

from .conftest import PLUGIN

pytestmark = pytest.mark.napari
MANIFEST = Path(__file__).resolve().parents[2] / "napari_dglandmark" / "napari.yaml"


def _voxel_steps(layer) -> np.ndarray:
    """World distance of one voxel step along each napari data axis."""
    origin = np.asarray(layer.data_to_world((0, 0, 0)))
    return np.array([np.linalg.norm(np.asarray(layer.data_to_world(tuple(np.eye(3)[a]))) - origin)
                     for a in range(3)])


def _check_landmarks_in_world(image, points, truth):
    np.testing.assert_allclose(_voxel_steps(image), np.abs(image.affine.scale))
    for name in ("AC", "PC", "genu of CC"):
        i = list(points.features["landmark"]).index(name)
        world = np.asarray(points.data_to_world(points.data[i]))
        np.testing.assert_allclose(world, truth.get(name)[::-1], atol=1e-9)
    # and the image agrees: the voxel under AC (via the image's own affine) is the core's index of AC
    ac = truth.get("AC")
    kji = np.asarray(image.world_to_data(ac[::-1]))
    volume = read_volume(image.metadata["path"])
    np.testing.assert_allclose(kji[::-1], volume.physical_to_index(ac), atol=1e-6)
    assert all(0 <= v < n for v, n in zip(np.round(kji), image.data.shape, strict=True))


def test_sample_opens_with_2mm_voxels_and_landmarks_on_top(sample_viewer):
    image, points = sample_viewer.layers
    assert image.data.shape == (97, 115, 97)
    np.testing.assert_allclose(_voxel_steps(image), [2.0, 2.0, 2.0])
    assert len(points.data) == 32
    _check_landmarks_in_world(image, points, read_landmarks(SAMPLE_LANDMARKS))


def test_real_1mm_template(make_napari_viewer, shared_data):
    t1w = shared_data / "afids-mni2009c" / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
    gt = shared_data / "afids-mni2009c" / "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
    viewer = make_napari_viewer()
    viewer.open(str(t1w), plugin=PLUGIN)
    viewer.open(str(gt), plugin=PLUGIN)
    image, points = viewer.layers
    np.testing.assert_allclose(_voxel_steps(image), [1.0, 1.0, 1.0])
    assert points.metadata["protocol"] == "afids32"
    _check_landmarks_in_world(image, points, read_landmarks(gt))


def test_sample_data_contribution(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "afids_t1w")
    assert [type(lay).__name__ for lay in viewer.layers] == ["Image", "Points"]
    assert len(afids_t1w()[1][0]) == 32


@pytest.mark.parametrize("suffix", [".csv", ".mrk.json", ".fcsv"])
def test_writer_reader_round_trip(sample_viewer, tmp_path, suffix):
    points = sample_viewer.layers[1]
    # move one point and delete another: the file must say so, by name
    data = points.data.copy()
    pc = list(points.features["landmark"]).index("PC")
    data[pc] += [1.0, -2.0, 0.5]
    points.data = data
    ac = list(points.features["landmark"]).index("AC")
    points.selected_data = {ac}
    points.remove_selected()
    out = tmp_path / f"edited{suffix}"
    written = points.save(str(out), plugin=PLUGIN)
    assert written == [str(out)] and out.exists()
    back = read_landmarks(out)
    truth = read_landmarks(SAMPLE_LANDMARKS)
    if suffix == ".fcsv":  # the format cannot hold an unplaced point: it is left out
        assert len(back) == 31 and "AC" not in back.names
    else:
        assert len(back) == 32 and back.status[back.index_of("AC")] == "missing"
    np.testing.assert_allclose(back.get("PC"), truth.get("PC") + [0.5, -2.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(back.get("culmen"), truth.get("culmen"), atol=1e-9)
    # and napari reads it back onto the same world positions
    sample_viewer.open(str(out), plugin=PLUGIN)
    again = sample_viewer.layers[-1]
    names = list(again.features["landmark"])
    assert "AC" not in names and len(names) == 31
    np.testing.assert_allclose(again.data[names.index("PC")], data[pc], atol=1e-9)


def test_reader_claims_only_its_files(tmp_path):
    other = tmp_path / "table.csv"
    other.write_text("a,b\n1,2\n")
    assert napari_get_reader(str(other)) is None
    assert napari_get_reader(str(tmp_path / "x.tif")) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder without DICOM files
    assert napari_get_reader(str(SAMPLE_VOLUME)) is not None
    assert napari_get_reader(str(SAMPLE_LANDMARKS)) is not None


def test_bad_file_gives_one_line_reason(make_napari_viewer, tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08this is not a gzip stream")
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:  # napari may wrap it (ReaderPluginError) on the GUI path
        viewer.open(str(bad), plugin=PLUGIN)
    reason = info.value
    while reason is not None and not isinstance(reason, DGLandmarkError):
        reason = getattr(reason, "original_error", None) or reason.__cause__
    assert isinstance(reason, DGLandmarkError)
    assert "\n" not in str(reason) and str(reason).startswith(str(bad))
    assert shown == [str(reason)]
    assert len(viewer.layers) == 0


def test_manifest_validates():
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _write_dicom_series(folder: Path, image) -> None:
    """A tiny axial MR series, one file per slice, with the geometry tags GDCM sorts by."""
    import SimpleITK as sitk

    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in [("0020|000e", "1.2.826.0.1.3680043.2.1125.42"), ("0008|0060", "MR"),
                           ("0020|0037", "\\".join(map(str, d[0:3] + d[3:6]))),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0013", str(k + 1)), ("0018|0050", str(image.GetSpacing()[2]))]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def test_dicom_folder_opens_with_its_geometry(make_napari_viewer, tmp_path):
    import SimpleITK as sitk

    arr = (np.arange(6 * 7 * 8).reshape(6, 7, 8) % 50).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    folder = tmp_path / "series"
    _write_dicom_series(folder, image)
    assert napari_get_reader(str(folder)) is not None
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin=PLUGIN)
    layer = viewer.layers[0]
    np.testing.assert_array_equal(layer.data, arr)
    np.testing.assert_allclose(_voxel_steps(layer), [2.0, 0.9, 0.8])
    ijk = np.array([3.0, 2.0, 4.0])
    world = np.asarray(layer.data_to_world(tuple(ijk[::-1])))
    np.testing.assert_allclose(world, np.array(image.TransformContinuousIndexToPhysicalPoint(ijk))[::-1])


def test_oblique_volume_keeps_index_to_mm(make_napari_viewer, tmp_path):
    from napari_dglandmark.io import Geometry, Volume, write_volume

    a = np.deg2rad(25)
    direction = np.array([[np.cos(a), 0, np.sin(a)], [0, -1, 0], [-np.sin(a), 0, np.cos(a)]]) @ np.diag([-1, 1, 1])
    vol = Volume(np.random.default_rng(1).integers(0, 100, (9, 10, 11)).astype(np.int16),
                 Geometry((9, 10, 11), (1.5, 1.0, 3.0), (5.0, 6.0, -7.0), direction))
    path = tmp_path / "oblique.nrrd"
    write_volume(vol, path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    layer = viewer.layers[0]
    # detection's volume keeps the file's index <-> mm mapping
    original = volume_from_image_layer(layer.data, layer.metadata, layer.affine.affine_matrix)
    ijk = np.array([[0, 0, 0], [10, 9, 8], [2.5, 3.25, 7.0]])
    np.testing.assert_allclose(original.index_to_physical(ijk), vol.index_to_physical(ijk), atol=1e-5)
    # and each voxel napari draws holds the file's trilinear intensity at that voxel's world position (SimpleITK)
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    checked = 0
    for kji in np.argwhere(np.ones(layer.data.shape, bool))[::7]:
        lps = np.asarray(layer.data_to_world(tuple(kji)), dtype=float)[::-1]
        inside = vol.physical_to_index(lps)
        if np.all(inside > 0) and np.all(inside < np.array(vol.geometry.size) - 1):
            expected = image.EvaluateAtPhysicalPoint(lps.tolist(), sitk.sitkLinear)
            assert abs(float(layer.data[tuple(kji)]) - expected) <= 0.5 + 1e-3
            checked += 1
    assert checked > 20
