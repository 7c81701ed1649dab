"""Real files as real tools write them: every scan of ../shared/data/real-unlabelled opens, with nibabel as oracle.

Quirks covered: ``vox_offset`` 0, NaN / 0 ``scl_slope``, 8-bit voxels with a scale factor (SimpleITK
returns them as float32 and the old completeness check refused them as "truncated"), FreeSurfer
MGZ/MGH, NIfTI-2, big-endian NIfTI, and reading each compressed file exactly once.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import rawfile as rawfile_module
from napari_dglandmark.io import read_volume
from napari_dglandmark.io import volume as volume_module
from napari_dglandmark.io.volume import Volume, is_volume_file, strip_volume_suffix
from tests.conftest import SHARED_DATA, require_shared

nib = pytest.importorskip("nibabel")

REAL = SHARED_DATA / "real-unlabelled"
REAL_NAMES = ["CT_head_tilted.nii.gz", "T1_head_neck_1.6mm.nii.gz", "T2w_1x1x2mm.nii.gz", "chris_t1.nii.gz",
              "stroke_T1.nii.gz", "stroke_T2.nii.gz", "freesurfer_norm.mgz"]


def _real(name: str) -> Path:
    return require_shared(REAL / name)


def _nibabel_voxels(path: Path) -> np.ndarray:
    """nibabel's (scaled) voxels in our (z, y, x) order."""
    data = np.asarray(nib.load(str(path)).dataobj)
    return data.reshape(data.shape[:3]).T


def _corner_and_inner_voxels(size: tuple[int, int, int]) -> np.ndarray:
    nx, ny, nz = size
    return np.array([[0, 0, 0], [nx - 1, 0, 0], [0, ny - 1, 0], [0, 0, nz - 1], [nx - 1, ny - 1, nz - 1],
                     [nx // 3, ny // 2, nz // 4], [2.5, 7.25, 1.5]], dtype=float)


def _assert_positions_match_nibabel(volume: Volume, path: Path, tol: float = 1e-4) -> None:
    """Our index -> LPS equals nibabel's affine (RAS) with x and y negated."""
    affine = nib.load(str(path)).affine
    ijk = _corner_and_inner_voxels(volume.geometry.size)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(volume.index_to_physical(ijk), lps, atol=tol)


def test_real_file_list_is_complete(shared_data: Path) -> None:
    """The parametrised tests below cover every volume in the folder (a new file must be added there)."""
    assert sorted(p.name for p in REAL.iterdir() if is_volume_file(p)) == sorted(REAL_NAMES)


@pytest.mark.parametrize("name", REAL_NAMES)
def test_every_real_file_opens_with_nibabels_voxels_and_positions(name: str) -> None:
    path = _real(name)
    volume = read_volume(path)
    ref = _nibabel_voxels(path)
    assert volume.array.shape == ref.shape
    np.testing.assert_allclose(volume.array, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    _assert_positions_match_nibabel(volume, path)


def test_uint8_with_scale_factor_is_scaled_not_truncated(tmp_path: Path) -> None:
    """stroke_T2: 124x160x140 uint8 (2.78 MB of voxels) with scl_slope 2.0078; SimpleITK makes it float32."""
    path = _real("stroke_T2.nii.gz")
    header = nib.load(str(path)).header
    assert header.get_data_dtype() == np.uint8 and header["bitpix"] == 8
    raw_slope = struct.unpack("<f", gzip.open(path).read(116)[112:116])[0]
    assert raw_slope != 1.0  # the quirk itself: stored as 8-bit, scaled on reading
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkFloat32  # 4 bytes a voxel in memory
    volume = read_volume(path)
    stored = np.asarray(nib.load(str(path)).dataobj.get_unscaled()).T
    np.testing.assert_allclose(volume.array, stored.astype(np.float64) * raw_slope, rtol=1e-6)
    # the same voxels as the unscaled T1 of the same grid: co-registered, same geometry
    t1 = read_volume(_real("stroke_T1.nii.gz"))
    np.testing.assert_allclose(volume.index_to_physical([[10, 20, 30]]), t1.index_to_physical([[10, 20, 30]]))


def _patched_copy(src: Path, dst: Path, patch: dict[int, bytes], compress: bool = True) -> Path:
    """``src`` with header bytes replaced at the given offsets, written gzip-compressed or plain."""
    raw = bytearray(gzip.open(src).read())
    for offset, value in patch.items():
        raw[offset:offset + len(value)] = value
    dst.write_bytes(gzip.compress(bytes(raw), 1) if compress else bytes(raw))
    return dst


@pytest.mark.parametrize("compress", [True, False])
def test_vox_offset_zero_means_right_after_the_header(tmp_path: Path, compress: bool) -> None:
    """Writers that leave vox_offset 0: the voxels start at byte 352 (ITK and nibabel read from byte 0)."""
    src = _real("stroke_T1.nii.gz")
    path = _patched_copy(src, tmp_path / ("vox0.nii.gz" if compress else "vox0.nii"),
                         {108: struct.pack("<f", 0.0)}, compress)
    assert nib.load(str(path)).header["vox_offset"] == 0
    volume = read_volume(path)
    original = read_volume(src)
    np.testing.assert_array_equal(volume.array, original.array)
    np.testing.assert_allclose(volume.geometry.index_to_physical_matrix(), original.geometry.index_to_physical_matrix())
    # what a reader that takes 0 literally gets: the header's bytes as voxels
    assert not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), original.array)


@pytest.mark.parametrize("slope, inter", [(float("nan"), float("nan")), (0.0, 5.0), (float("inf"), 0.0),
                                          (1.0, float("nan"))])
def test_unset_scale_factor_means_unscaled(tmp_path: Path, slope: float, inter: float) -> None:
    """NaN, 0 or infinite scl_slope means no scaling (the NIfTI standard); ITK adds scl_inter for slope 0."""
    src = _real("stroke_T1.nii.gz")
    path = _patched_copy(src, tmp_path / "noscale.nii.gz", {112: struct.pack("<ff", slope, inter)})
    volume = read_volume(path)
    original = read_volume(src)
    assert volume.array.dtype == np.uint8
    np.testing.assert_array_equal(volume.array, original.array)


def _oblique_affine() -> np.ndarray:
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [-40.5, 12.25, -7.0]
    return affine


@pytest.mark.parametrize("dtype, slope, inter", [(np.int16, 0.5, -10.0), (np.uint8, 2.5, 100.0),
                                                  (np.float32, -3.0, 0.25), (np.int16, 1.0, 7.0)])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_synthetic_scale_factors(tmp_path: Path, dtype, slope: float, inter: float, suffix: str) -> None:
    """Values come out as stored * scl_slope + scl_inter; positions equal the file's affine."""
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 120, size=(11, 9, 7)).astype(dtype)  # nibabel order (x, y, z)
    image = nib.Nifti1Image(stored, _oblique_affine())
    image.header.set_slope_inter(slope, inter)
    path = tmp_path / f"scaled{suffix}"
    nib.save(image, str(path))
    raw = gzip.open(path).read(120) if suffix.endswith("gz") else path.read_bytes()[:120]
    assert struct.unpack("<2f", raw[112:120]) == (np.float32(slope), np.float32(inter))  # really in the header
    volume = read_volume(path)
    np.testing.assert_allclose(volume.array, stored.T.astype(np.float64) * slope + inter, rtol=1e-6)
    _assert_positions_match_nibabel(volume, path, tol=1e-5)


def test_nifti2_and_big_endian(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    stored = rng.normal(0, 100, size=(8, 9, 10)).astype(np.float32)
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti2Image(stored, _oblique_affine()), str(two))
    big = tmp_path / "big.nii"
    header = nib.Nifti1Header(endianness=">")
    nib.save(nib.Nifti1Image(stored, _oblique_affine(), header), str(big))
    assert big.read_bytes()[:4] == struct.pack(">i", 348)
    for path in (two, big):
        volume = read_volume(path)
        np.testing.assert_array_equal(volume.array, stored.T)
        assert volume.array.dtype.isnative
        _assert_positions_match_nibabel(volume, path, tol=1e-5)


def test_mgz_positions_follow_nibabels_affine(tmp_path: Path) -> None:
    """FreeSurfer norm.mgz (256^3 conformed, LIA): SimpleITK cannot read it; we do, with exact geometry."""
    path = _real("freesurfer_norm.mgz")
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))
    volume = read_volume(path)
    assert volume.geometry.size == (256, 256, 256) and volume.array.dtype == np.uint8
    _assert_positions_match_nibabel(volume, path, tol=1e-4)
    # conformed LIA: i runs to the left (+x in LPS), j to inferior (-z), k to anterior (-y)
    np.testing.assert_allclose(volume.direction, [[1, 0, 0], [0, 0, -1], [0, -1, 0]], atol=1e-6)
    # the uncompressed .mgh of the same data reads the same
    plain = tmp_path / "norm.mgh"
    with gzip.open(path) as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    again = read_volume(plain)
    np.testing.assert_array_equal(again.array, volume.array)
    np.testing.assert_array_equal(again.geometry.index_to_physical_matrix(), volume.geometry.index_to_physical_matrix())


def test_synthetic_mgh_types_and_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for dtype in (np.uint8, np.int16, np.int32, np.float32):
        data = rng.integers(0, 100, size=(6, 7, 8)).astype(dtype)
        path = tmp_path / f"v_{np.dtype(dtype).name}.mgz"
        nib.save(nib.MGHImage(data, _oblique_affine()), str(path))
        volume = read_volume(path)
        np.testing.assert_array_equal(volume.array, data.T)
        _assert_positions_match_nibabel(volume, path, tol=1e-4)
    four_d = tmp_path / "frames.mgz"
    nib.save(nib.MGHImage(np.zeros((6, 7, 8, 3), np.float32), np.eye(4)), str(four_d))
    with pytest.raises(DGLandmarkError, match="4D"):
        read_volume(four_d)


def test_truncated_mgz_and_mgh(tmp_path: Path) -> None:
    path = _real("freesurfer_norm.mgz")
    data = path.read_bytes()
    cut = tmp_path / "cut.mgz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DGLandmarkError, match="truncated"):
        read_volume(cut)
    plain = gzip.decompress(data)
    cut_plain = tmp_path / "cut.mgh"
    cut_plain.write_bytes(plain[: len(plain) // 2])
    with pytest.raises(DGLandmarkError, match="truncated"):
        read_volume(cut_plain)


def test_compressed_nifti_is_decompressed_once(monkeypatch, shared_data: Path) -> None:
    """Reading the 193x229x193 T1w opens the gzip stream once, and SimpleITK reads only its header."""
    from tests.conftest import T1W

    opened: list[str] = []
    real_open = rawfile_module.gzip.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    def no_full_read(*_args, **_kwargs):
        raise AssertionError("the voxels were read a second time through SimpleITK")

    monkeypatch.setattr(rawfile_module.gzip, "open", counting_open)
    monkeypatch.setattr(volume_module.sitk, "ReadImage", no_full_read)
    volume = read_volume(T1W)
    assert opened == [str(T1W)]
    assert volume.geometry.size == (193, 229, 193) and volume.array.dtype == np.int16


# --------------------------------------------------------------------------- the three ways in


def test_every_real_file_opens_in_the_napari_reader(tmp_path: Path) -> None:
    from napari_dglandmark._reader import napari_get_reader, read_paths

    paths = [str(_real(name)) for name in REAL_NAMES]
    for path in paths:
        assert napari_get_reader(path) is not None, path
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not gzip at all" * 10)
    layers = read_paths([*paths, str(bad)])  # one bad file does not lose the others
    assert len(layers) == len(paths)
    from napari_dglandmark.io.display import display_volume

    for (data, _kwargs, kind), path in zip(layers, paths, strict=True):
        # napari gets the display copy: oblique scans resampled, permuted ones transposed (io.display)
        assert kind == "image" and np.asarray(data).shape == display_volume(read_volume(path)).array.shape


def test_every_real_file_loads_as_a_training_case(tmp_path: Path) -> None:
    from napari_dglandmark.io import Landmarks, write_landmarks
    from napari_dglandmark.model.single_stage import SingleStageConfig
    from training.data import Cache, find_landmark_cases, load_landmark_cases

    root = tmp_path / "dataset"
    root.mkdir()
    for name in REAL_NAMES:
        (root / name).symlink_to(_real(name))
        volume = read_volume(root / name)
        centre = volume.index_to_physical(np.array(volume.geometry.size) / 2)
        stem = strip_volume_suffix(name)
        write_landmarks(root / f"{stem}.fcsv", Landmarks(["AC", "PC"], [centre, centre + 5]), coords="LPS")
    items = find_landmark_cases(root)
    assert sorted(it.image.name for it in items) == sorted(REAL_NAMES)
    cases = load_landmark_cases(items, ["AC", "PC"], SingleStageConfig(grid_size=(16, 16, 16)), Cache(tmp_path / "c"))
    assert len(cases) == len(REAL_NAMES)
    for case in cases:
        assert tuple(case.image.shape) == (16, 16, 16) and np.isfinite(case.image.numpy()).all()


def test_every_real_file_runs_through_detect(tmp_path: Path, tiny_model_path: Path, capsys) -> None:
    import csv

    from napari_dglandmark.cli import main

    paths = [str(_real(name)) for name in REAL_NAMES]
    out = tmp_path / "out.csv"
    assert main(["detect", *paths, "--model", str(tiny_model_path), "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    with open(out, newline="") as fh:
        images = {row["image"] for row in csv.DictReader(fh)}
    assert images == set(paths)


def test_gzip_integrity(tmp_path: Path) -> None:
    """A damaged stream is refused (CRC, corrupt deflate data); bytes after the last member are ignored."""
    src = _real("stroke_T1.nii.gz")
    data = src.read_bytes()
    original = read_volume(src)
    trailing = tmp_path / "trailing.nii.gz"
    trailing.write_bytes(data + b"trailing junk")
    np.testing.assert_array_equal(read_volume(trailing).array, original.array)
    crc = bytearray(data)
    crc[-6] ^= 1  # the stored CRC32
    (tmp_path / "crc.nii.gz").write_bytes(bytes(crc))
    assert "CRC check failed" in str(pytest.raises(DGLandmarkError, read_volume, tmp_path / "crc.nii.gz").value)
    middle = bytearray(data)
    middle[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # a damaged block inside the voxels
    (tmp_path / "middle.nii.gz").write_bytes(bytes(middle))
    with pytest.raises(DGLandmarkError, match="corrupt|truncated"):
        read_volume(tmp_path / "middle.nii.gz")
