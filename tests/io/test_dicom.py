"""Real scanner DICOM: a plain series reads with dcm2niix's geometry; what is not one 3D volume is never stacked.

dcm2niix (PyPI ``dcm2niix``) is the oracle for geometry; its tests skip when it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark.cli import main
from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_volume
from napari_dglandmark.io.volume import Volume
from tests.conftest import SHARED_DATA, require_shared

pydicom = pytest.importorskip("pydicom")

DICOM = SHARED_DATA / "real-dicom"
SIEMENS = DICOM / "siemens_t1_sagittal_supine"
CLASSIC = DICOM / "philips_fieldmap_multiecho_classic"
ENHANCED = DICOM / "philips_fieldmap_multiframe_enhanced"
FIELDMAP_UID = "1.3.46.670589.11.45053.5.0.8352.2021090213371866874"
# our volume ids (sorted by echo, then image type M < P) -> dcm2niix's file names with -f %e
FIELDMAP_VOLUMES = {1: "1.nii", 2: "1_ph.nii", 3: "2.nii", 4: "2_ph.nii"}


def _one_line_error(func, *args, **kwargs) -> str:
    with pytest.raises(DGLandmarkError) as info:
        func(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def dcm2niix(tmp_path_factory) -> callable:
    """Convert a DICOM folder with dcm2niix (cached per folder); returns {file name: nibabel image}."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed (pip install dcm2niix)")
    nib = pytest.importorskip("nibabel")
    done: dict[Path, dict] = {}

    def convert(folder: Path) -> dict:
        if folder not in done:
            out = tmp_path_factory.mktemp("dcm2niix")
            subprocess.run([exe, "-z", "n", "-b", "n", "-f", "%e", "-o", str(out), str(require_shared(folder))],
                           check=True, capture_output=True)
            done[folder] = {p.name: nib.load(str(p)) for p in out.glob("*.nii")}
        return done[folder]

    return convert


def _compare_with_nifti(volume: Volume, image, step: int = 3) -> tuple[float, np.ndarray, np.ndarray]:
    """Map a grid of dcm2niix's voxel centres into our grid: (max position error in mm, our values, theirs)."""
    size = image.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(0, n, step) for n in size], indexing="ij"), -1).reshape(-1, 3)
    lps = (ijk @ image.affine[:3, :3].T + image.affine[:3, 3]) * np.array([-1.0, -1.0, 1.0])
    ours = volume.physical_to_index(lps)
    nearest = np.round(ours).astype(int)
    assert (nearest >= 0).all() and (nearest < np.array(volume.geometry.size)).all()
    error = float(np.abs(volume.index_to_physical(nearest) - lps).max())
    theirs = np.asarray(image.dataobj)[tuple(ijk.T)]
    return error, volume.array[nearest[:, 2], nearest[:, 1], nearest[:, 0]], theirs


def test_siemens_sagittal_series_matches_dcm2niix(dcm2niix) -> None:
    volume = read_volume(require_shared(SIEMENS))  # the series sits one folder down
    assert volume.geometry.size == (256, 256, 35) and volume.array.dtype == np.uint16
    np.testing.assert_allclose(volume.spacing, (1.015625, 1.015625, 4.8), atol=1e-5)
    images = dcm2niix(SIEMENS)
    assert len(images) == 1
    error, ours, theirs = _compare_with_nifti(volume, next(iter(images.values())), step=1)
    assert error < 1e-3, error  # every voxel centre of dcm2niix's grid is one of ours, to 0.001 mm
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("folder", [CLASSIC, ENHANCED], ids=["classic", "enhanced"])
def test_fieldmap_is_refused_with_its_four_volumes(folder: Path) -> None:
    text = _one_line_error(read_volume, require_shared(folder))
    assert text.startswith(str(folder)) and "4 3D volumes" in text and "--series" in text
    for n in FIELDMAP_VOLUMES:
        assert f"{FIELDMAP_UID}#{n}" in text and f"2001#{n}" in text
    assert text.count("80x80x53 volume") == 4  # never one 212-slice stack


@pytest.mark.parametrize("folder", [CLASSIC, ENHANCED], ids=["classic", "enhanced"])
def test_fieldmap_volumes_match_dcm2niix(folder: Path, dcm2niix) -> None:
    images = dcm2niix(folder)
    assert sorted(images) == sorted(FIELDMAP_VOLUMES.values())
    for n, name in FIELDMAP_VOLUMES.items():
        volume = read_volume(require_shared(folder), series=f"2001#{n}")
        assert volume.geometry.size == (80, 80, 53)
        error, ours, theirs = _compare_with_nifti(volume, images[name])
        assert error < 1e-3, (n, error)
        # dcm2niix keeps Philips' private scaling; the values are the same up to a linear map
        assert np.corrcoef(ours.astype(float), theirs.astype(float))[0, 1] > 0.99999, (n, name)


def test_enhanced_multiframe_equals_the_classic_export() -> None:
    """The same acquisition stored both ways gives the same four volumes (no oracle needed)."""
    for n in FIELDMAP_VOLUMES:
        classic = read_volume(require_shared(CLASSIC), series=f"{FIELDMAP_UID}#{n}")
        enhanced = read_volume(require_shared(ENHANCED), series=f"2001#{n}")
        np.testing.assert_allclose(enhanced.array, classic.array, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(enhanced.geometry.index_to_physical_matrix(),
                                   classic.geometry.index_to_physical_matrix(), atol=1e-4)
    # the classic slices are 3 mm apart along the slice normal, not 212 slices 1 mm apart
    assert classic.spacing[2] == pytest.approx(3.0, abs=1e-3)


def test_single_enhanced_file_and_unknown_series() -> None:
    file = next(require_shared(ENHANCED).glob("*.dcm"))
    assert read_volume(file, series="2001#2").geometry.size == (80, 80, 53)
    assert "4 3D volumes" in _one_line_error(read_volume, file)
    text = _one_line_error(read_volume, CLASSIC, series="9999")
    assert "no single DICOM volume matches series '9999'" in text and "2001#4" in text
    text = _one_line_error(read_volume, CLASSIC, series="2001")  # the series holds 4: which one?
    assert "2001#1" in text


# --------------------------------------------------------------------------- folders made from real slices


def _siemens_files() -> list[Path]:
    return sorted((require_shared(SIEMENS) / "3_t1_fl2d_sag").glob("*.dcm"))


def _copy(files: list[Path], folder: Path, prefix: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f"{prefix}{f.name}")
    return folder


def _rewrite(files: list[Path], folder: Path, edit) -> Path:
    """Copies of ``files`` in ``folder`` after ``edit(dataset, index)``."""
    folder.mkdir(exist_ok=True)
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        edit(ds, n)
        ds.save_as(folder / f"edited_{f.name}")
    return folder


def _positions_sorted(files: list[Path]) -> list[Path]:
    normal = np.array([1.0, 0.0, 0.0])
    return sorted(files, key=lambda f: float(np.dot(pydicom.dcmread(f, stop_before_pixels=True)
                                                    .ImagePositionPatient, normal)))


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    files = _positions_sorted(_siemens_files())
    folder = _copy(files[:17] + files[18:], tmp_path / "gap")
    text = _one_line_error(read_volume, folder)
    assert "non-uniform slice spacing" in text and "no 3D volume" in text


def test_repeated_positions_are_refused_as_4d(tmp_path: Path) -> None:
    files = _siemens_files()
    folder = _copy(files, tmp_path / "twice")
    _copy(files, folder, prefix="again_")
    assert "2 images at each of 35 positions" in _one_line_error(read_volume, folder)


def test_two_series_in_one_folder_are_listed_and_chosen(tmp_path: Path) -> None:
    files = _siemens_files()
    folder = _copy(files, tmp_path / "two")
    other_uid = "1.2.826.0.1.3680043.8.498.1"

    def other_series(ds, n: int) -> None:  # a second, smaller series: 20 slices of the same head
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = other_uid, 7, "other"
        ds.SOPInstanceUID = f"{other_uid}.{n}"

    _rewrite(_positions_sorted(files)[5:25], folder, other_series)
    text = _one_line_error(read_volume, folder)
    assert "2 3D volumes" in text and other_uid in text and "x35 volume" in text and "x20 volume" in text
    assert read_volume(folder, series=other_uid).geometry.size == (256, 256, 20)
    assert read_volume(folder, series="3").geometry.size == (256, 256, 35)  # by SeriesNumber


def test_files_that_are_not_slices_do_not_block_the_series(tmp_path: Path) -> None:
    files = _siemens_files()
    folder = _copy(files, tmp_path / "mixed")
    (folder / "notes.txt").write_text("not DICOM")

    def no_position(ds, _n: int) -> None:  # e.g. a screen capture stored beside the series
        del ds.ImagePositionPatient
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"

    _rewrite(files[:1], folder, no_position)
    assert read_volume(folder).geometry.size == (256, 256, 35)
    only = _rewrite(files[:2], tmp_path / "only_captures", no_position)
    assert "ImagePositionPatient" in _one_line_error(read_volume, only)


def test_orientation_noise_is_one_volume_and_a_localizer_is_not(tmp_path: Path) -> None:
    files = _positions_sorted(_siemens_files())
    rng = np.random.default_rng(0)

    def noisy(ds, _n: int) -> None:  # float noise in the direction cosines, as scanners write them
        ds.ImageOrientationPatient = [f"{float(v) + rng.uniform(-2e-5, 2e-5):.8f}" for v in ds.ImageOrientationPatient]

    folder = _rewrite(files, tmp_path / "noisy", noisy)
    reference = read_volume(require_shared(SIEMENS))

    def localizer(ds, n: int) -> None:  # three orthogonal scouts in the same series
        ds.ImageOrientationPatient = [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 0.8, 0.6, 0, 0.6, -0.8]][n]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.9{n}"

    _rewrite(files[:3], folder / "scouts", localizer)
    volume = read_volume(folder)
    assert volume.geometry.size == reference.geometry.size
    np.testing.assert_allclose(volume.geometry.index_to_physical_matrix(), reference.geometry.index_to_physical_matrix(),
                               atol=1e-3)


def test_sheared_stack_is_refused(tmp_path: Path) -> None:
    files = _positions_sorted(_siemens_files())

    def tilt(ds, n: int) -> None:  # each slice shifted in-plane: a gantry-tilted (sheared) stack
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.8 * n, z]

    text = _one_line_error(read_volume, _rewrite(files, tmp_path / "tilt", tilt))
    assert "gantry tilt" in text


def test_detect_cli_series_option(tiny_model_path: Path, tmp_path: Path, capsys) -> None:
    folder = require_shared(CLASSIC)
    out = tmp_path / "fieldmap.csv"
    assert main(["detect", str(folder), "--model", str(tiny_model_path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "--series" in err
    assert main(["detect", str(folder), "--series", "2001#1", "--model", str(tiny_model_path), "--out", str(out),
                 "--quiet"]) == 0
    assert out.exists()
