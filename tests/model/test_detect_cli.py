"""``dglandmark detect`` / ``models``: outputs, and every bad input -> one line, exit 2, nothing written."""

from __future__ import annotations

import csv
import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from napari_dglandmark.cli import main
from napari_dglandmark.io import read_landmarks


def _write_image(path, array, spacing=(1.2, 1.0, 1.5)):
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing)
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def head(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(50, 5, (40, 48, 44)).astype(np.int16)
    arr[8:32, 10:38, 8:36] += 400
    return _write_image(tmp_path / "head.nii.gz", arr)


def _only_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_detect_csv_rows(head, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert main(["detect", str(head), str(head), "--model", str(tiny_model_path), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["landmark", "x", "y", "z", "coordinate_system", "i", "j", "k", "confidence",
                             "needs_review", "status", "placed_by", "image", "model", "model_sha256", "exported_at",
                             "image_warning"]
    assert {r["status"] for r in rows} == {"predicted"} and {r["placed_by"] for r in rows} == {"model"}
    assert {r["needs_review"] for r in rows} <= {"1", "0"}
    assert len(rows) == 64 and {r["coordinate_system"] for r in rows} == {"RAS"}
    # i, j, k and x, y, z describe the same point: RAS = flip(LPS), LPS = origin + D diag(spacing) ijk
    r = rows[0]
    ijk = np.array([float(r[c]) for c in "ijk"])
    ras = np.array([float(r[c]) for c in "xyz"])
    lps = np.array([-1.0, -1.0, 1.0]) * ijk * np.array([1.2, 1.0, 1.5])
    np.testing.assert_allclose(ras, lps * np.array([-1, -1, 1]), atol=1e-6)


def _stdout_rows(capsys) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_detect_to_stdout_lps_is_ras_with_x_y_negated(head, tiny_model_path, capsys):
    assert main(["detect", str(head), "--model", str(tiny_model_path)]) == 0
    ras = _stdout_rows(capsys)
    assert main(["detect", str(head), "--model", str(tiny_model_path), "--coords", "LPS"]) == 0
    lps = _stdout_rows(capsys)
    assert len(ras) == len(lps) == 32
    assert {r["coordinate_system"] for r in ras} == {"RAS"} and {r["coordinate_system"] for r in lps} == {"LPS"}
    assert [r["landmark"] for r in ras] == [r["landmark"] for r in lps]
    xyz_ras = np.array([[float(r[c]) for c in "xyz"] for r in ras])
    xyz_lps = np.array([[float(r[c]) for c in "xyz"] for r in lps])
    assert np.abs(xyz_ras[:, :2]).max() > 1.0  # not trivially zero
    np.testing.assert_allclose(xyz_lps, xyz_ras * np.array([-1.0, -1.0, 1.0]), rtol=0, atol=1e-9)
    for name in ("i", "j", "k", "confidence"):  # the voxel index does not depend on the coordinate system
        assert [r[name] for r in ras] == [r[name] for r in lps]


def test_detect_mrk_json_holds_points_and_measurement_lines(head, tiny_model_path, tmp_path):
    out = tmp_path / "head.mrk.json"
    assert main(["detect", str(head), "--model", str(tiny_model_path), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    kinds = [m["type"] for m in doc["markups"]]
    assert kinds[0] == "Fiducial" and kinds.count("Line") == 2
    line = next(m for m in doc["markups"] if m["name"] == "AC-PC")
    a, b = (np.array(p["position"]) for p in line["controlPoints"])
    assert line["measurements"][0]["value"] == pytest.approx(float(np.linalg.norm(a - b)))
    assert len(read_landmarks(out)) == 32


def test_detect_folder_output(head, tiny_model_path, tmp_path):
    folder = tmp_path / "res"
    folder.mkdir()
    assert main(["detect", str(head), "--model", str(tiny_model_path), "--out", str(folder), "--format", "fcsv"]) == 0
    assert len(read_landmarks(folder / "head.fcsv")) == 32


def _bad_cases(tmp_path, head, tiny_model_path):
    pickled = tmp_path / "model.pth"
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled.write_bytes(pickle.dumps(Evil()))
    notmodel = tmp_path / "junk.safetensors"
    notmodel.write_bytes(b"\x00\x01 not a model at all" * 10)
    flat = _write_image(tmp_path / "flat.nii.gz", np.zeros((20, 20, 20), np.int16))
    nan = np.ones((20, 20, 20), np.float32)
    nan[3, 4, 5] = np.nan
    nan_img = _write_image(tmp_path / "nan.mha", nan)  # NIfTI I/O drops NaN; MetaImage keeps it
    two_d = _write_image(tmp_path / "slice.nii.gz", np.ones((30, 30), np.float32))
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a NIfTI file" * 40)
    return marker, {
        "constant image": ([str(flat), "--model", str(tiny_model_path)], "constant"),
        "NaN voxels": ([str(nan_img), "--model", str(tiny_model_path)], "NaN"),
        "2D image": ([str(two_d), "--model", str(tiny_model_path)], "3D volume is needed"),
        "other protocol": ([str(head), "--model", str(tiny_model_path), "--protocol", "fetal-biometry"], "protocol"),
        "not a checkpoint": ([str(head), "--model", str(notmodel)], "junk.safetensors"),
        "pickled model": ([str(head), "--model", str(pickled)], "pickle"),
        "missing image": ([str(tmp_path / "nope.nii.gz"), "--model", str(tiny_model_path)], "no such file"),
        "unknown model": ([str(head), "--model", "no-such-model"], "no bundled model"),
        "empty folder": ([str(empty), "--model", str(tiny_model_path)], "no DICOM series"),
        "not an image": ([str(junk), "--model", str(tiny_model_path)], "junk.nii.gz"),
    }


@pytest.mark.parametrize("case", ["constant image", "NaN voxels", "2D image", "other protocol", "not a checkpoint",
                                  "pickled model", "missing image", "unknown model", "empty folder",
                                  "not an image"])
def test_detect_bad_input(case, head, tiny_model_path, tmp_path, capfd):
    """capfd, not capsys: what SimpleITK / ITK print from C++ counts as a line too."""
    marker, cases = _bad_cases(tmp_path, head, tiny_model_path)
    args, expected = cases[case]
    out = tmp_path / "result.csv"
    assert main(["detect", *args, "--out", str(out)]) == 2
    err = _only_line(capfd.readouterr().err)
    assert expected.lower() in err.lower()
    assert not out.exists() and not list(tmp_path.glob(".result*"))
    assert not marker.exists()  # the pickle was never executed


def test_detect_bad_output_folder_fails_before_work(head, tiny_model_path, tmp_path, capsys):
    assert main(["detect", str(head), "--model", str(tiny_model_path), "--out", str(tmp_path / "no" / "x.csv")]) == 2
    assert "output folder does not exist" in _only_line(capsys.readouterr().err)


def test_detect_subprocess_has_no_traceback(tmp_path, tiny_model_path):
    proc = subprocess.run([sys.executable, "-m", "napari_dglandmark.cli", "detect", str(tmp_path / "x.nii.gz"),
                           "--model", str(tiny_model_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert _only_line(proc.stderr).startswith("dglandmark: error:")


def test_models_lists_bundled(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("afids32") and "protocol: afids32 (32 landmarks)" in text and "MRE" in text


def test_nan_background_warns_in_one_line(tmp_path, tiny_model_path):
    """Masked pipelines write NaN outside the head: one warning line, landmarks still written."""
    import SimpleITK as sitk

    arr = np.full((40, 40, 40), np.nan, np.float32)
    arr[8:32, 8:32, 8:32] = np.random.default_rng(0).uniform(50, 200, (24, 24, 24))
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((4.0, 4.0, 4.0))
    path = tmp_path / "masked.nii.gz"
    sitk.WriteImage(image, str(path))
    proc = subprocess.run([sys.executable, "-m", "napari_dglandmark.cli", "detect", str(path), "--model",
                           str(tiny_model_path), "--out", str(tmp_path / "out.csv")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line and "it/s" not in line]
    nan = [line for line in lines if "NaN" in line]
    assert len(nan) == 1 and nan[0].startswith("dglandmark: warning:"), proc.stderr  # no source line under it
    assert all(line.startswith("dglandmark: ") for line in lines), proc.stderr
    assert (tmp_path / "out.csv").is_file()
