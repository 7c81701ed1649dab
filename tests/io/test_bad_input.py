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
