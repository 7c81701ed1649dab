"""Volumes: every format keeps spacing, origin and direction; landmarks stay put under flips/permutations."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_dglandmark.io import read_landmarks, read_volume, write_volume
from napari_dglandmark.io.volume import Geometry, Volume, volume_to_sitk
from tests.conftest import CT_DIR, GT_FCSV, T1W

# An oblique, left-handed-free rotation (columns are the i, j, k axes in LPS).
_ROT = np.array([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0], [0.0, 0.8, -0.6]])


def _synthetic(direction: np.ndarray = _ROT) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 2000, size=(6, 7, 8)).astype(np.int16)
    geometry = Geometry(shape=array.shape, spacing=(0.7, 1.3, 2.5), origin=(-12.5, 40.25, 7.0),
                        direction=direction)
    return Volume(array, geometry)


def _assert_same_geometry(a: Geometry, b: Geometry, tol: float = 1e-5) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_file_formats_keep_geometry(tmp_path: Path, suffix: str) -> None:
    vol = _synthetic()
    path = tmp_path / f"case{suffix}"
    write_volume(vol, path)
    back = read_volume(path)
    _assert_same_geometry(vol.geometry, back.geometry)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.name == "case"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temp files left
    if suffix in (".mhd", ".nhdr"):  # header + data file: the data keeps the final name
        assert len(names) == 2 and all(n.startswith("case.") for n in names), names


def _write_dicom_series(vol: Volume, folder: Path) -> None:
    """One file per slice, with the tags GDCM needs to rebuild the geometry."""
    image = volume_to_sitk(vol)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = vol.direction
    iop = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1000))
    common = {
        "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0010|0010": "Test^Synthetic",
        "0010|0020": "DGL0001", "0020|000d": series_uid + ".1", "0020|000e": series_uid + ".2",
        "0020|0037": iop, "0008|103e": "synthetic", "0018|0050": f"{vol.spacing[2]:.6f}",
        "0028|1050": "0", "0028|1051": "4000",
    }
    for k in range(image.GetDepth()):
        slc = image[:, :, k]
        for tag, value in common.items():
            slc.SetMetaData(tag, value)
        position = vol.index_to_physical(np.array([0.0, 0.0, k]))
        slc.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slc.SetMetaData("0020|0013", str(k + 1))
        slc.SetMetaData("0008|0018", f"{series_uid}.3.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slc)


def test_dicom_series_folder(tmp_path: Path) -> None:
    vol = _synthetic()
    _write_dicom_series(vol, tmp_path)
    back = read_volume(tmp_path)
    _assert_same_geometry(vol.geometry, back.geometry, tol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)


def test_ct_nrrd_anisotropic_spacing(shared_data: Path) -> None:
    ct = read_volume(CT_DIR / "CTChest4.nrrd")
    assert ct.geometry.size == (128, 128, 34)
    assert ct.array.shape == (34, 128, 128)
    np.testing.assert_allclose(ct.spacing, (3.046875, 3.046875, 10.0), atol=1e-5)
    np.testing.assert_allclose(ct.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-9)


def test_t1w_ac_voxel_index(shared_data: Path) -> None:
    t1 = read_volume(T1W)
    gt = read_landmarks(GT_FCSV)
    np.testing.assert_allclose(t1.physical_to_index(gt.get("AC")), (95.8, 134.7, 73.1), atol=0.05)
    np.testing.assert_allclose(t1.direction, np.diag([-1.0, -1.0, 1.0]))


@pytest.fixture(scope="module")
def t1w_crop(shared_data: Path) -> tuple[sitk.Image, np.ndarray]:
    """The T1w cropped to the box around the 32 AFIDs (plus a margin), and the LPS landmarks."""
    image = sitk.ReadImage(str(T1W))
    gt = read_landmarks(GT_FCSV)
    assert len(gt) == 32
    index = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in gt.positions])
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int) - 3, 0)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 4, image.GetSize())
    crop = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]  # slicing keeps physical space
    return crop, gt.positions


def _value_at(volume, point: np.ndarray) -> tuple[int, np.ndarray]:
    idx = volume.physical_to_index(point)
    i, j, k = np.round(idx).astype(int)
    return volume.array[k, j, i], idx


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_flipped_permuted_t1w_keeps_landmarks(tmp_path: Path, t1w_crop, suffix: str) -> None:
    crop, points = t1w_crop
    original = tmp_path / f"orig{suffix}"
    sitk.WriteImage(crop, str(original))
    # PermuteAxes and Flip keep every voxel at its physical place (geometry adjusted).
    moved = sitk.Flip(sitk.PermuteAxes(crop, [2, 0, 1]), [True, False, True])
    assert not np.allclose(np.array(moved.GetDirection()), np.array(crop.GetDirection()))
    resaved = tmp_path / f"moved{suffix}"
    sitk.WriteImage(moved, str(resaved))
    a, b = read_volume(original), read_volume(resaved)
    assert b.array.shape == (crop.GetSize()[1], crop.GetSize()[0], crop.GetSize()[2])
    for point in points:
        va, ia = _value_at(a, point)
        vb, ib = _value_at(b, point)
        assert va == vb
        np.testing.assert_allclose(b.index_to_physical(ib), point, atol=1e-4)
        np.testing.assert_allclose(a.index_to_physical(ia), point, atol=1e-4)
        # the same voxel: moving the index through both geometries lands on the same place
        np.testing.assert_allclose(b.index_to_physical(np.round(ib)), a.index_to_physical(np.round(ia)),
                                   atol=1e-4)


def test_numpy_flip_transpose_with_matching_geometry(tmp_path: Path, t1w_crop) -> None:
    """The same check done by hand in numpy: flip x, swap y/z, and fix origin and direction."""
    crop, points = t1w_crop
    a = read_volume(_save(crop, tmp_path / "a.nii.gz"))
    g = a.geometry
    nx = g.size[0]
    arr = a.array[:, :, ::-1]  # flip i
    arr = np.transpose(arr, (1, 0, 2))  # [k, j, i] -> [j, k, i]: new j is old k, new k is old j
    d = g.direction.copy()
    new_dir = np.column_stack([-d[:, 0], d[:, 2], d[:, 1]])
    new_origin = g.index_to_physical(np.array([nx - 1, 0.0, 0.0]))
    new_spacing = (g.spacing[0], g.spacing[2], g.spacing[1])
    moved = Volume(np.ascontiguousarray(arr), Geometry(arr.shape, new_spacing, tuple(new_origin), new_dir))
    write_volume(moved, tmp_path / "b.nrrd")
    b = read_volume(tmp_path / "b.nrrd")
    for point in points:
        va, _ = _value_at(a, point)
        vb, ib = _value_at(b, point)
        assert va == vb
        np.testing.assert_allclose(b.index_to_physical(ib), point, atol=1e-4)


def _save(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def test_one_volume_suffix_check_for_reader_and_training(tmp_path: Path) -> None:
    from napari_dglandmark._reader import napari_get_reader
    from napari_dglandmark.io.volume import is_volume_file
    from training.data import _is_volume

    for name in ("a.nii", "a.NII.GZ", "a.nrrd", "a.nhdr", "a.mha", "a.mhd", "norm.mgz", "T1.MGH"):
        assert is_volume_file(name), name
        (tmp_path / name).write_bytes(b"")
        assert _is_volume(tmp_path / name) and napari_get_reader(str(tmp_path / name)) is not None, name
    for name in ("slice.dcm", "a.csv", "a.fcsv", "a.nii.gz.bak", "a.tif"):
        assert not is_volume_file(name), name
        (tmp_path / name).write_bytes(b"")
        assert not _is_volume(tmp_path / name), name
