"""session.py: correction statuses, undo, sidecar autosave and export, without Qt."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from napari_dglandmark import session as S
from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_landmarks
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry
from napari_dglandmark.protocols import load_protocol


def _predicted() -> Landmarks:
    return Landmarks(["AC", "PC", "genu of CC"], np.array([[0.0, 2, 3], [0, 30, 0], [1, -20, 15]]),
                     confidence=np.array([0.9, 0.4, 0.8]), status=["predicted"] * 3, image="/x/img.nii.gz",
                     model="tiny")


def _moved(lms: Landmarks, name: str, delta) -> Landmarks:
    out = lms.copy()
    out.positions[out.index_of(name)] += delta
    return out


def test_statuses_follow_edits_and_undo_restores():
    s = S.CorrectionSession(_predicted())
    assert not s.edited and not s.can_undo
    after = s.edit(_moved(s.landmarks, "PC", [5.0, 0, 0]))
    assert after.status == ["predicted", "corrected", "predicted"]
    assert after.confidence[1] == pytest.approx(0.4)  # the model's confidence is kept
    assert s.edited and s.unexported
    gone = s.landmarks.copy()
    gone.positions[0] = np.nan
    after = s.edit(gone)
    assert after.status[0] == "missing"
    back = s.landmarks.copy()
    back.positions[0] = [1.0, 1, 1]
    after = s.edit(back)
    assert after.status[0] == "added"
    assert s.edit(_moved(s.landmarks, "AC", [1.0, 0, 0])).status[0] == "added"  # still added after a move
    assert s.accept("genu of CC").status[2] == "verified"
    with pytest.raises(DGLandmarkError, match="missing"):
        gone = s.landmarks.copy()
        gone.positions[1] = np.nan
        s.edit(gone)
        s.accept("PC")
    # undo walks back one edit at a time
    assert s.undo().status[1] == "corrected"
    assert s.undo().status[2] == "predicted"
    assert s.undo().positions[0] == pytest.approx([1.0, 1, 1])
    s.undo()
    s.undo()
    first = s.undo()
    assert first.status == ["predicted"] * 3 and s.undo() is None


def test_a_drag_is_one_undo_step_and_no_op_edits_are_ignored():
    s = S.CorrectionSession(_predicted())
    s.edit(s.landmarks.copy())
    assert not s.can_undo
    s.begin_gesture()
    for step in range(5):
        s.edit(_moved(s.landmarks, "AC", [0.5 * step + 0.5, 0, 0]))
    s.end_gesture()
    assert s.landmarks.status[0] == "corrected"
    assert s.undo().positions[0] == pytest.approx([0.0, 2, 3]) and not s.can_undo


def test_sidecar_round_trip_in_the_user_folder_never_beside_the_image(tmp_path, monkeypatch):
    monkeypatch.delenv(S.SIDECAR_DIR_ENV, raising=False)
    monkeypatch.setattr(S, "user_sidecar_dir", lambda: tmp_path / "user")
    data = tmp_path / "bids" / "sub-01" / "anat"
    data.mkdir(parents=True)
    image = data / "case01.nii.gz"
    image.write_bytes(b"")
    lms = _predicted()
    lms.image = str(image)
    s = S.CorrectionSession(lms, model_sha256="abc", protocol="afids32")
    s.edit(_moved(s.landmarks, "PC", [0, 0, 4.0]))
    path = S.save_sidecar(s)
    assert path.parent == tmp_path / "user" and path.name.startswith("case01-")
    assert sorted(p.name for p in data.iterdir()) == ["case01.nii.gz"]  # the dataset stays clean
    other = S.CorrectionSession(lms.copy(), model="other")
    S.save_sidecar(other)
    assert set(S.read_sidecar(image)) == {"tiny", "other"}
    back = S.load_sidecar(image, "tiny")
    assert back.landmarks.status == ["predicted", "corrected", "predicted"]
    np.testing.assert_allclose(back.landmarks.positions, s.landmarks.positions)
    assert back.model_sha256 == "abc" and back.unexported and back.protocol == "afids32"
    assert S.load_sidecar(tmp_path / "none.nii.gz") is None
    path.write_text("{oops")
    with pytest.raises(DGLandmarkError, match="unreadable sidecar"):
        S.load_sidecar(image)


def test_a_sidecar_of_an_older_version_beside_the_image_is_still_read(tmp_path, monkeypatch):
    monkeypatch.delenv(S.SIDECAR_DIR_ENV, raising=False)
    monkeypatch.setattr(S, "user_sidecar_dir", lambda: tmp_path / "user")
    image = tmp_path / "scan.nii.gz"
    image.write_bytes(b"")
    lms = _predicted()
    lms.image = str(image)
    s = S.CorrectionSession(lms)
    s.edit(_moved(s.landmarks, "AC", [1.0, 0, 0]))
    S.save_sidecar(s).rename(S.legacy_sidecar_path(image))
    assert S.legacy_sidecar_path(image) == tmp_path / "scan.dglandmark.json"
    assert S.load_sidecar(image, "tiny").landmarks.status[0] == "corrected"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_sidecar_goes_to_the_user_folder_when_the_image_folder_is_read_only(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    image = ro / "scan.nii.gz"
    image.write_bytes(b"")
    ro.chmod(0o555)
    monkeypatch.delenv(S.SIDECAR_DIR_ENV, raising=False)
    monkeypatch.setattr(S, "user_sidecar_dir", lambda: tmp_path / "user")
    path = S.sidecar_path(image)
    assert path.parent == tmp_path / "user" and path.name.endswith(S.SIDECAR_SUFFIX)
    monkeypatch.undo()
    monkeypatch.setenv(S.SIDECAR_DIR_ENV, str(tmp_path / "env"))
    assert S.sidecar_path(image).parent == tmp_path / "env"
    ro.chmod(0o755)


def test_sidecar_of_the_bundled_sample_goes_to_the_user_folder(tmp_path, monkeypatch):
    from napari_dglandmark._sample_data import SAMPLE_VOLUME

    monkeypatch.delenv(S.SIDECAR_DIR_ENV, raising=False)
    monkeypatch.setattr(S, "user_sidecar_dir", lambda: tmp_path / "user")
    assert S.sidecar_path(SAMPLE_VOLUME).parent == tmp_path / "user"


def test_a_hand_placed_landmark_has_no_model_confidence_and_the_review_flags_persist(tmp_path, monkeypatch):
    monkeypatch.setenv(S.SIDECAR_DIR_ENV, str(tmp_path))
    s = S.CorrectionSession(_predicted())
    gone = s.landmarks.copy()
    gone.positions[0] = np.nan
    s.edit(gone)
    back = s.landmarks.copy()
    back.positions[0] = [1.0, 1, 1]
    back.confidence[0] = 0.83  # what napari copies from the deleted point's features
    after = s.edit(back)
    assert after.status[0] == "added" and np.isnan(after.confidence[0])
    assert after.confidence[1] == pytest.approx(0.4)
    s.landmarks.needs_review = np.array([False, True, False])
    entry = s.to_dict()
    assert [r.get("needs_review") for r in entry["landmarks"]] == [False, True, False]
    assert entry["landmarks"][0]["confidence"] is None
    again = S.CorrectionSession.from_dict(entry)
    np.testing.assert_array_equal(again.landmarks.needs_review, [False, True, False])


def test_export_writes_three_files_with_the_documented_columns(tmp_path):
    protocol = load_protocol("afids32")
    lms = _predicted()
    lms.positions[1] = np.nan
    lms.status[1] = "missing"
    geometry = Geometry((10, 10, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    paths = S.export_all(tmp_path / "out.csv", lms, protocol, "LPS", geometry, "f00d", "2025-01-01T00:00:00+00:00")
    assert [p.name for p in paths] == ["out.csv", "out_measurements.csv", "out.mrk.json"]
    with open(paths[0], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(S.EXPORT_COLUMNS)
    assert rows[0]["coordinate_system"] == "LPS" and float(rows[0]["i"]) == pytest.approx(0.0)
    assert rows[0]["model_sha256"] == "f00d" and rows[0]["model"] == "tiny"
    assert rows[1]["status"] == "missing" and rows[1]["x"] == ""
    with open(paths[1], newline="") as fh:
        meas = {r["measurement"]: r for r in csv.DictReader(fh)}
    assert list(next(iter(meas.values()))) == list(S.MEASUREMENT_COLUMNS)
    assert meas["AC-PC"]["status"] == "missing" and meas["AC-PC"]["value_mm"] == ""
    doc = json.loads(paths[2].read_text())
    assert doc["markups"][0]["coordinateSystem"] == "LPS"
    back = read_landmarks(paths[0])
    np.testing.assert_allclose(back.positions[0], lms.positions[0])
    assert back.status == ["predicted", "missing", "predicted"]


def test_next_name_wraps():
    names = ["a", "b", "c"]
    assert S.next_name(names, None) == "a" and S.next_name(names, None, -1) == "c"
    assert S.next_name(names, "C") == "a" and S.next_name(names, "a", -1) == "c"
    assert S.next_name([], "a") is None


def test_session_imports_neither_napari_nor_qt():
    import subprocess

    code = ("import sys, napari_dglandmark.session; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'vispy')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
