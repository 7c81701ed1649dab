"""Bad input: one-line DGLandmarkError naming the file; the CLI exits 2 with no traceback and no output."""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_dglandmark.cli import main, run_command
from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import Landmarks, read_landmarks, read_volume, write_landmarks, write_volume
from napari_dglandmark.io import atomic as atomic_module
from napari_dglandmark.io import volume as volume_module
from napari_dglandmark.io.volume import Geometry, Volume
from tests.conftest import GT_FCSV

_HEADER = "# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\n" \
          "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"


def _one_line_error(func, path: Path) -> str:
    with pytest.raises(DGLandmarkError) as info:
        func(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    return text


def _assert_cli_fails(capsys, argv: list[str], output: Path, named: Path) -> str:
    before = sorted(os.listdir(output.parent)) if output.parent.is_dir() else None
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err and str(named) in err
    assert not output.exists()
    if before is not None:
        assert sorted(os.listdir(output.parent)) == before  # nor any temporary file
    return err


# --------------------------------------------------------------------------- images

def _small_nifti(path: Path, shape=(8, 9, 10)) -> Path:
    image = sitk.GetImageFromArray(np.arange(np.prod(shape), dtype=np.int16).reshape(shape))
    sitk.WriteImage(image, str(path))
    return path


def _bad_images(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    corrupt_gz = tmp_path / "corrupt_gz.nii.gz"  # valid gzip, random payload
    corrupt_gz.write_bytes(gzip.compress(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()))
    full = _small_nifti(tmp_path / "full.nii.gz", (40, 40, 40))
    data = full.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    raw = _small_nifti(tmp_path / "raw.nii", (40, 40, 40)).read_bytes()
    truncated_raw = tmp_path / "truncated_raw.nii"  # ITK zero-fills these silently
    truncated_raw.write_bytes(raw[: len(raw) // 2])
    two_d = tmp_path / "slice2d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 10), np.int16)), str(two_d))
    one_slice = tmp_path / "oneslice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 9, 10), np.int16)), str(one_slice))
    four_d = tmp_path / "fourd.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.int16), isVector=False), str(four_d))
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    return {"corrupt": corrupt, "corrupt_gz": corrupt_gz, "truncated": truncated, "truncated_raw": truncated_raw, "2d": two_d,
            "one_slice": one_slice, "4d": four_d, "empty": empty, "missing": tmp_path / "nope.nii.gz",
            "empty_folder": _mkdir(tmp_path / "no_dicom")}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["corrupt", "corrupt_gz", "truncated", "truncated_raw", "2d", "one_slice", "4d", "empty",
                                  "missing", "empty_folder"])
def test_bad_images(tmp_path: Path, capsys, kind: str) -> None:
    path = _bad_images(tmp_path)[kind]
    text = _one_line_error(read_volume, path)
    if kind in ("2d", "one_slice", "4d"):
        assert "3D" in text
    # through the CLI's error handling: exit 2, one line on stderr, no traceback
    assert run_command(lambda _args: read_volume(path) and 0, argparse.Namespace(), "dglandmark") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err


def test_4d_with_single_timepoint_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "t1.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 4, 5, 6), np.int16), isVector=False), str(path))
    assert read_volume(path).array.shape == (4, 5, 6)


# --------------------------------------------------------------------------- landmark files

_BAD_FILES = {
    "malformed.mrk.json": '{"markups": [ {"type": "Fiducial", ',
    "nomarkups.mrk.json": '{"@schema": "x", "points": []}',
    "emptylist.mrk.json": '{"@schema": "x", "markups": []}',
    "badpos.mrk.json": json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "A", "position": [1, "two", 3]}]}]}),
    "badconf.mrk.json": json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "A", "position": [1, 2, 3], "dglandmarkConfidence": "high"}]}]}),
    "badsystem.mrk.json": json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ",
                                                   "controlPoints": [{"label": "A", "position": [1, 2, 3]}]}]}),
    "dupes.mrk.json": json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "A", "position": [1, 2, 3]}, {"label": "a", "position": [1, 2, 3]}]}]}),
    "missingcols.csv": "landmark,x,y\nAC,1,2\n",
    "nonnumeric.csv": "landmark,x,y,z,coordinate_system\nAC,one,2,3,RAS\n",
    "badsystem.csv": "landmark,x,y,z,coordinate_system\nAC,1,2,3,XYZ\n",
    "empty.csv": "",
    "noname.csv": "landmark,x,y,z,coordinate_system\n,1,2,3,RAS\n",
    "fewfields.fcsv": _HEADER + "1,2,3\n",
    "nonnumeric.fcsv": _HEADER + "1,a,b,c,0,0,0,1,1,1,0,AC,,\n",
    "badsystem.fcsv": _HEADER.replace("= 0", "= 7") + "1,1,2,3,0,0,0,1,1,1,0,AC,,\n",
    "nopoints.fcsv": _HEADER,
    "binary.fcsv": None,
    "noname.fcsv": _HEADER + "1,1,2,3,0,0,0,1,1,1,0,,,\n",
    "unknown.txt": "AC,1,2,3\n",
}


@pytest.mark.parametrize("name", sorted(_BAD_FILES))
def test_bad_landmark_files(tmp_path: Path, capsys, name: str) -> None:
    src = tmp_path / name
    if _BAD_FILES[name] is None:
        src.write_bytes(b"\xff\xfe\x00\x81" * 50)
    else:
        src.write_text(_BAD_FILES[name])
    _one_line_error(read_landmarks, src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for out in ("x.csv", "x.mrk.json", "x.fcsv"):
        _assert_cli_fails(capsys, ["convert", str(src), str(out_dir / out)], out_dir / out, src)


def test_unknown_names_with_protocol(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in.csv"
    src.write_text("landmark,x,y,z,coordinate_system\nAC,1,2,3,RAS\nnose tip,1,2,3,RAS\n")
    out = tmp_path / "out.mrk.json"
    err = _assert_cli_fails(capsys, ["convert", str(src), str(out), "--protocol", "afids32"], out, src)
    assert "nose tip" in err


def test_unknown_protocol_name(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in.csv"
    src.write_text("landmark,x,y,z,coordinate_system\nAC,1,2,3,RAS\n")
    out = tmp_path / "out.csv"
    assert main(["convert", str(src), str(out), "--protocol", "no-such"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such" in err and not out.exists()


def test_output_folder_does_not_exist(tmp_path: Path, capsys, shared_data: Path) -> None:
    for name in ("x.csv", "x.mrk.json", "x.fcsv"):
        out = tmp_path / "no" / "such" / name
        err = _assert_cli_fails(capsys, ["convert", str(GT_FCSV), str(out)], out, out)
        assert "does not exist" in err
    vol = Volume(np.zeros((3, 4, 5), np.int16), Geometry((3, 4, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    for name in ("v.nii.gz", "v.mhd"):
        _one_line_error(lambda p: write_volume(vol, p), tmp_path / "nowhere" / name)


def test_unknown_output_type(tmp_path: Path, capsys, shared_data: Path) -> None:
    out = tmp_path / "x.txt"
    _assert_cli_fails(capsys, ["convert", str(GT_FCSV), str(out)], out, out)


# --------------------------------------------------------------------------- atomicity

def _previous(path: Path) -> str:
    path.write_text("previous content\n")
    return path.read_text()


@pytest.mark.parametrize("name", ["out.csv", "out.fcsv"])  # JSON escapes it instead
def test_failed_write_keeps_previous_file(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    before = _previous(out)
    # a name Python cannot encode as UTF-8 fails half way through writing
    lm = Landmarks(["AC", "bad\udc80name"], [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(UnicodeEncodeError):
        write_landmarks(out, lm)
    assert out.read_text() == before
    assert sorted(os.listdir(tmp_path)) == [name]


def test_failed_fsync_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.mrk.json"
    before = _previous(out)

    def broken_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_landmarks(out, Landmarks(["AC"], [[1, 2, 3]]))
    assert out.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["out.mrk.json"]


@pytest.mark.parametrize("name", ["out.nii.gz", "out.mhd"])
def test_failed_volume_write_keeps_previous_file(tmp_path: Path, monkeypatch, name: str) -> None:
    out = tmp_path / name
    before = _previous(out)

    def broken_write(image, path, *args) -> None:
        Path(path).write_bytes(b"partial")
        raise RuntimeError("ITK ERROR: disk full")

    monkeypatch.setattr(volume_module.sitk, "WriteImage", broken_write)
    vol = Volume(np.zeros((3, 4, 5), np.int16), Geometry((3, 4, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    text = _one_line_error(lambda p: write_volume(vol, p), out)
    assert "disk full" in text
    assert out.read_text() == before
    assert sorted(os.listdir(tmp_path)) == [name]


def test_cli_failure_keeps_previous_output(tmp_path: Path, capsys) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("landmark,x,y,z\nAC,one,2,3\n")
    out = tmp_path / "out.fcsv"
    before = _previous(out)
    assert main(["convert", str(src), str(out)]) == 2
    assert out.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "out.fcsv"]
    capsys.readouterr()


def test_truncated_real_t1w(tmp_path: Path, shared_data: Path) -> None:
    from tests.conftest import T1W

    data = T1W.read_bytes()
    half = tmp_path / "t1w_half.nii.gz"
    half.write_bytes(data[: len(data) // 2])
    assert "truncated" in _one_line_error(read_volume, half)


# --------------------------------------------------------------------------- garbage in: refused, not detected


def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _head_like(shape=(40, 48, 44)) -> np.ndarray:
    arr = np.random.default_rng(2).normal(50, 5, shape).astype(np.float32)
    arr[8:-8, 10:-10, 8:-8] += 400
    return arr


def _garbage(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    nib = pytest.importorskip("nibabel")
    complex_nii = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image((_head_like() * (1 + 2j)).astype(np.complex64), np.eye(4)), str(complex_nii))
    complex_nrrd = tmp_path / "complex.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray((_head_like() * (1 - 1j)).astype(np.complex64)), str(complex_nrrd))
    rgb = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20, 20, 3), np.uint8), isVector=True), str(rgb))
    all_nan = np.full((40, 48, 44), np.nan, np.float32)
    return {
        "2x2x2 voxels": (_write(tmp_path / "tiny.nii.gz", np.arange(8, dtype=np.int16).reshape(2, 2, 2)), "smaller"),
        "10 mm field of view": (_write(tmp_path / "small.nii.gz", _head_like(), (0.25, 0.25, 0.25)), "smaller"),
        "500 mm voxels": (_write(tmp_path / "huge.nii.gz", _head_like((20, 20, 20)), (500.0, 500.0, 500.0)),
                          "implausible voxel size"),
        "complex NIfTI": (complex_nii, "not a scalar intensity"),
        "complex NRRD": (complex_nrrd, "not a scalar intensity"),
        "RGB": (rgb, "not a scalar intensity"),
        "all NaN": (_write(tmp_path / "allnan.nrrd", all_nan), "NaN"),
    }


_GARBAGE = ["2x2x2 voxels", "10 mm field of view", "500 mm voxels", "complex NIfTI", "complex NRRD", "RGB", "all NaN"]


@pytest.mark.parametrize("kind", _GARBAGE)
def test_garbage_images_are_refused_by_detect(tmp_path: Path, capsys, tiny_model_path: Path, kind: str) -> None:
    path, reason = _garbage(tmp_path)[kind]
    out = tmp_path / "out.csv"
    assert main(["detect", str(path), "--model", str(tiny_model_path), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and reason in err and "Traceback" not in err
    assert not out.exists() and not captured.out.strip()


def test_pixel_type_is_refused_when_reading(tmp_path: Path) -> None:
    garbage = _garbage(tmp_path)
    for kind in ("complex NIfTI", "complex NRRD", "RGB"):
        assert "not a scalar intensity" in _one_line_error(read_volume, garbage[kind][0])


def test_nan_background_is_background(shared_data: Path) -> None:
    """A masked image (NaN/Inf outside the head) gives the landmarks of the unmasked one, with one warning."""
    import warnings
    from importlib import resources

    from scipy import ndimage

    from napari_dglandmark.model.inference import Detector
    from napari_dglandmark.protocols import load_protocol

    root = resources.files("napari_dglandmark") / "sample_data"
    volume = read_volume(str(root / "afids_t1w_2mm.nii.gz"))
    truth = load_protocol("afids32").conform(read_landmarks(str(root / "afids_t1w_2mm_groundtruth.mrk.json")))
    arr = volume.array.astype(np.float32)
    head = ndimage.binary_fill_holes(ndimage.gaussian_filter(arr, 2) > 0.15 * arr.max())
    head = ndimage.binary_dilation(head, iterations=2)
    assert 0.2 < head.mean() < 0.8
    masked = np.where(head, arr, np.nan).astype(np.float32)
    outside = np.flatnonzero(~head)
    masked.reshape(-1)[outside[::7]] = np.inf  # some writers use +/-Inf
    masked.reshape(-1)[outside[3::7]] = -np.inf
    detector = Detector("afids32", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = detector.detect(Volume(masked, volume.geometry, "masked.nii.gz"))
    messages = [str(w.message) for w in caught if "NaN" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert messages[0].startswith("masked.nii.gz: ") and "treated as background" in messages[0]
    assert np.isfinite(pred.positions).all()
    err = np.linalg.norm(pred.positions - truth.positions, axis=1)
    assert err.mean() < 1.0 and err.max() < 2.5, err  # as good as on the unmasked sample


def test_check_voxels_floors_are_documented_values() -> None:
    from napari_dglandmark.model.preprocess import MAX_VOXEL_SIZE_MM, MIN_FIELD_OF_VIEW_MM, check_voxels

    geometry = Geometry((40, 40, 40), (1.0, 1.0, MAX_VOXEL_SIZE_MM), (0.0, 0.0, 0.0))
    check_voxels(Volume(_head_like((40, 40, 40)), geometry, "ok.nii.gz"))  # at the limit: accepted
    too_thick = Geometry((40, 40, 40), (1.0, 1.0, MAX_VOXEL_SIZE_MM * 1.01), (0.0, 0.0, 0.0))
    with pytest.raises(DGLandmarkError, match="implausible voxel size"):
        check_voxels(Volume(_head_like((40, 40, 40)), too_thick, "thick.nii.gz"))
    fov = MIN_FIELD_OF_VIEW_MM / 40 * 0.99
    with pytest.raises(DGLandmarkError, match="smaller than any protocol's anatomy"):
        check_voxels(Volume(_head_like((40, 40, 40)), Geometry((40, 40, 40), (1.0, fov, 1.0), (0, 0, 0)), "s.nii"))
