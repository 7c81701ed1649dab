"""``dglandmark detect`` on a batch: results written as each image completes, failures named and skipped,
non-zero exit at the end, ``--skip-existing`` resumes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from napari_dglandmark import detect_cli
from napari_dglandmark.cli import main
from napari_dglandmark.io import read_landmarks
from napari_dglandmark.io.csv_table import LANDMARK_COLUMNS


def _head(path, shift=0):
    rng = np.random.default_rng(1 + shift)
    arr = rng.normal(50, 5, (40, 48, 44)).astype(np.int16)
    arr[8 + shift:32 + shift, 10:38, 8:36] += 400
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.2, 1.0, 1.5))
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def images(tmp_path):
    good_a = _head(tmp_path / "a.nii.gz")
    good_b = _head(tmp_path / "b.nii.gz", shift=2)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzip stream" * 20)
    return good_a, str(bad), good_b


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _lines(text):
    return [ln for ln in text.splitlines() if ln.strip()]


def test_bad_image_in_the_middle_keeps_the_good_rows(images, tiny_model_path, tmp_path, capsys):
    good_a, bad, good_b = images
    out = tmp_path / "results.csv"
    code = main(["detect", good_a, bad, good_b, "--model", str(tiny_model_path), "--out", str(out), "--quiet"])
    assert code != 0
    rows = _rows(out)
    assert [r["image"] for r in rows] == [good_a] * 32 + [good_b] * 32
    err = _lines(capsys.readouterr().err)
    errors = [ln for ln in err if ln.startswith("dglandmark: error:")]
    assert len(errors) == 1 and "bad.nii.gz" in errors[0], err
    assert "Traceback" not in "\n".join(err)
    assert err[-1].endswith("1 failed: " + bad), err  # the closing line names it again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_each_image_is_written_as_it_completes(images, tiny_model_path, tmp_path, monkeypatch):
    """A crash (here: Ctrl-C) on the third image keeps the rows of the first in the CSV."""
    good_a, bad, good_b = images
    out = tmp_path / "results.csv"
    real = detect_cli._detect_one
    seen = []

    def detect_one(image, detector, args):
        seen.append(image)
        if image == good_b:
            raise KeyboardInterrupt
        return real(image, detector, args)

    monkeypatch.setattr(detect_cli, "_detect_one", detect_one)
    code = main(["detect", good_a, bad, good_b, "--model", str(tiny_model_path), "--out", str(out), "--quiet"])
    assert code == 130 and seen == [good_a, bad, good_b]
    assert {r["image"] for r in _rows(out)} == {good_a} and len(_rows(out)) == 32


def test_all_images_bad_writes_nothing(images, tiny_model_path, tmp_path, capsys):
    _, bad, _ = images
    missing = str(tmp_path / "missing.nii.gz")
    out = tmp_path / "results.csv"
    assert main(["detect", bad, missing, "--model", str(tiny_model_path), "--out", str(out), "--quiet"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 3 and "bad.nii.gz" in err[0] and "missing.nii.gz" in err[1], err
    assert "0 of 2 image(s)" in err[2]
    assert not out.exists()


def test_stdout_streams_one_header_and_every_good_image(images, tiny_model_path, capsys):
    good_a, bad, good_b = images
    assert main(["detect", good_a, bad, good_b, "--model", str(tiny_model_path)]) == 2
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == ",".join(LANDMARK_COLUMNS) and sum(ln.startswith("landmark,") for ln in lines) == 1
    assert len(lines) == 1 + 64


def test_folder_output_and_skip_existing_resumes(images, tiny_model_path, tmp_path, monkeypatch, capsys):
    good_a, bad, good_b = images
    folder = tmp_path / "res"
    folder.mkdir()
    args = ["detect", good_a, bad, good_b, "--model", str(tiny_model_path), "--out", str(folder), "--format", "fcsv"]
    assert main([*args, "--quiet"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["a.fcsv", "b.fcsv"]
    assert len(read_landmarks(folder / "a.fcsv")) == 32
    capsys.readouterr()

    # The bad image is repaired; a re-run with --skip-existing computes only that one.
    _head(tmp_path / "bad.nii.gz", shift=1)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    os.utime(folder / "a.fcsv", ns=(1, 1))
    real = detect_cli._detect_one
    seen = []

    def detect_one(image, detector, a):
        seen.append(image)
        return real(image, detector, a)

    monkeypatch.setattr(detect_cli, "_detect_one", detect_one)
    assert main([*args, "--skip-existing"]) == 0
    assert seen == [bad]
    assert (folder / "a.fcsv").stat().st_mtime_ns == 1 and (folder / "b.fcsv").stat().st_mtime_ns == before["b.fcsv"]
    assert len(read_landmarks(folder / "bad.fcsv")) == 32
    err = capsys.readouterr().err
    assert "1 of 3 image(s)" in err and "2 skipped (result exists)" in err

    # Without --skip-existing everything is recomputed.
    seen.clear()
    assert main([*args, "--quiet"]) == 0 and seen == [good_a, bad, good_b]


def test_skip_existing_summary_line(images, tiny_model_path, tmp_path, capsys):
    good_a, _, _ = images
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "a.csv").write_text("landmark,x,y,z,coordinate_system\n")
    assert main(["detect", good_a, "--model", str(tiny_model_path), "--out", str(folder), "--skip-existing"]) == 0
    err = _lines(capsys.readouterr().err)
    assert err == [f"dglandmark: detected 32 landmarks in 0 of 1 image(s) -> {folder}; 1 skipped (result exists)"]
    assert (folder / "a.csv").read_text() == "landmark,x,y,z,coordinate_system\n"


@pytest.mark.parametrize("out", [None, "results.csv"])
def test_skip_existing_needs_a_folder(images, tiny_model_path, tmp_path, capsys, out):
    extra = ["--out", str(tmp_path / out)] if out else []
    assert main(["detect", images[0], "--model", str(tiny_model_path), *extra, "--skip-existing"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "--skip-existing needs --out DIR" in err[0]


def test_two_images_with_one_output_name_fail_before_work(tmp_path, tiny_model_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = _head(tmp_path / "x" / "scan.nii.gz"), _head(tmp_path / "y" / "scan.nrrd")
    folder = tmp_path / "res"
    folder.mkdir()
    assert main(["detect", a, b, "--model", str(tiny_model_path), "--out", str(folder)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "scan.csv" in err[0] and a in err[0] and b in err[0]
    assert not list(folder.iterdir())


def test_empty_folder_is_one_line(tmp_path, tiny_model_path):
    """ITK's own warning ('No Series were found') must not add lines: the whole stderr is one line."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "napari_dglandmark.cli", "detect", str(empty),
                           "--model", str(tiny_model_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert _lines(proc.stderr) == [f"dglandmark: error: {empty}: folder holds no DICOM series"], proc.stderr
