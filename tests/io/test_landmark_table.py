"""One review vocabulary and one landmark table: every writer emits the same columns, and a landmark a
person reviewed is never flagged in any file (CSV, .mrk.json as 3D Slicer reads it, the napari export)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark import session as S
from napari_dglandmark.io import Landmarks, read_landmarks, write_landmarks
from napari_dglandmark.io.csv_table import LANDMARK_COLUMNS, REQUIRED
from napari_dglandmark.io.geometry import Geometry
from napari_dglandmark.io.landmarks import (
    REVIEWED,
    STATUSES,
    Status,
    count_reviewed,
    is_reviewed_file,
    placed_by,
    reviewed,
)
from napari_dglandmark.io.markups_json import REVIEW_NOTE

README = Path(__file__).resolve().parents[2] / "README.md"
_STATUSES = ["predicted", "verified", "corrected", "added", "predicted", "missing"]


def _flagged() -> Landmarks:
    """Six landmarks the model flagged, one of each fate: still predicted, verified, moved, added, missing."""
    pos = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [-1.0, 0.5, 2.0], [3.0, 3.0, 3.0],
                    [np.nan] * 3])
    return Landmarks(["AC", "PC", "infracollicular sulcus", "PMJ", "RLVAC", "LLVAC"], pos,
                     descriptions=["anterior commissure", "", "", "", "", ""],
                     confidence=[0.2, 0.3, 0.1, np.nan, 0.9, np.nan], status=list(_STATUSES),
                     needs_review=[True, True, True, True, False, True],
                     placed_by=["model", "model", "human", "human", "model", "model"], model="m")


def _header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    return {r["landmark"]: r for r in csv.DictReader(path.open())}


# -- vocabulary -----------------------------------------------------------------------------------
def test_statuses_are_one_enum_equal_to_their_strings() -> None:
    assert STATUSES == tuple(Status) and [str(s) for s in STATUSES] == [
        "defined", "predicted", "corrected", "added", "verified", "missing"]
    assert Status.VERIFIED == "verified" and "corrected" in REVIEWED and "predicted" not in REVIEWED
    assert set(REVIEWED) == {"verified", "corrected", "added"}


def test_training_and_the_napari_layer_use_the_core_vocabulary() -> None:
    from napari_dglandmark import layers
    from training import adapt

    assert adapt.reviewed is reviewed and adapt.count_reviewed is count_reviewed and adapt.REVIEWED is REVIEWED
    assert adapt.is_reviewed_file is is_reviewed_file
    assert layers.placed_by is placed_by


def test_reviewed_keeps_only_what_a_person_looked_at() -> None:
    lms = _flagged()
    used = reviewed(lms)
    assert used.defined.tolist() == [False, True, True, True, False, False]
    assert count_reviewed(lms) == 3 and is_reviewed_file(lms)
    plain = Landmarks(["a", "b", "c"], [[0, 0, 0], [1, 1, 1], [np.nan] * 3])  # an annotation file: no statuses
    assert not is_reviewed_file(plain) and count_reviewed(plain) == 2


def test_placed_by_follows_the_status() -> None:
    lms = _flagged()
    assert placed_by(lms) == ["model", "model", "human", "human", "model", ""]
    lms.placed_by = ["model"] * 6  # what the model recorded before a person moved or placed them
    assert placed_by(lms) == ["model", "model", "human", "human", "model", ""]
    assert Landmarks(["a", "b"], [[0, 0, 0], [1, 1, 1]], status=["verified", "added"]).placed_by == ["model", "human"]


def test_open_review_flags_clear_reviewed_landmarks() -> None:
    lms = _flagged()
    assert lms.review_flags().tolist() == [True, True, True, True, False, True]  # what the model said
    assert lms.open_review_flags().tolist() == [True, False, False, False, False, True]
    unassessed = Landmarks(["a", "b"], [[0, 0, 0], [1, 1, 1]], confidence=[0.1, 0.1], status=["predicted", "verified"])
    assert unassessed.open_review_flags().tolist() == [True, False]  # the low-confidence fallback too


# -- one table ------------------------------------------------------------------------------------
def test_every_csv_writer_emits_the_one_table(tmp_path: Path) -> None:
    geometry = Geometry((10, 10, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    lms = _flagged()
    written = {
        "write_landmarks": tmp_path / "plain.csv",
        "write_landmarks+geometry": tmp_path / "geo.csv",
        "napari export": tmp_path / "export.csv",
    }
    write_landmarks(written["write_landmarks"], lms)
    write_landmarks(written["write_landmarks+geometry"], lms, geometry=geometry)
    S.export_landmarks_csv(written["napari export"], lms, geometry=geometry, model_sha256="abc")
    for what, path in written.items():
        assert _header(path) == list(LANDMARK_COLUMNS), what
    assert list(LANDMARK_COLUMNS[:5]) == list(REQUIRED) and S.EXPORT_COLUMNS == LANDMARK_COLUMNS
    plain, geo = _rows(written["write_landmarks"]), _rows(written["write_landmarks+geometry"])
    assert plain["AC"]["i"] == "" and float(geo["AC"]["k"]) == pytest.approx(1.5)
    assert _rows(written["napari export"])["AC"]["model_sha256"] == "abc"


def test_booleans_are_one_and_zero_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_landmarks(path, _flagged())
    rows = _rows(path)
    assert {r["needs_review"] for r in rows.values()} == {"1", "0"}
    back = read_landmarks(path)
    assert back.needs_review.tolist() == _flagged().open_review_flags().tolist()
    assert back.placed_by[:5] == ["model", "model", "human", "human", "model"]
    text = path.read_text().replace(",1,predicted,", ",true,predicted,").replace(",0,verified,", ",false,verified,")
    assert text != path.read_text()
    path.write_text(text)
    assert read_landmarks(path).needs_review.tolist() == back.needs_review.tolist()


def test_a_plain_annotation_stays_unassessed(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    write_landmarks(path, Landmarks(["a", "b"], [[0, 0, 0], [1, 2, 3]]))
    assert {r["needs_review"] for r in _rows(path).values()} == {""}
    assert read_landmarks(path).needs_review is None


def test_a_bad_placed_by_is_one_clear_error(tmp_path: Path) -> None:
    from napari_dglandmark.errors import DGLandmarkError

    path = tmp_path / "bad.csv"
    path.write_text("landmark,x,y,z,coordinate_system,placed_by\nAC,0,0,0,RAS,robot\n")
    with pytest.raises(DGLandmarkError, match=r"bad\.csv.*line 2: placed_by must be model or human"):
        read_landmarks(path)


def test_readme_documents_the_table_once_in_schema_order() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count("## The landmark table (CSV)") == 1
    section = text.split("## The landmark table (CSV)", 1)[1].split("\n## ", 1)[0]
    documented = []
    for line in section.splitlines():
        if line.startswith("| `"):
            documented += re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])
    assert documented == list(LANDMARK_COLUMNS)


# -- reviewed means reviewed, in every file --------------------------------------------------------
def test_reviewed_landmarks_are_not_flagged_in_the_mrk_json(tmp_path: Path) -> None:
    path = tmp_path / "x.mrk.json"
    lms = _flagged()
    lms.descriptions[1] = f"posterior commissure; {REVIEW_NOTE}"  # a note left from an earlier file
    write_landmarks(path, lms)
    points = json.loads(path.read_text())["markups"][0]["controlPoints"]
    still_open = [True, False, False, False, False, True]
    assert [p["selected"] for p in points] == still_open
    assert [REVIEW_NOTE in p["description"] for p in points] == still_open
    assert [p["dglandmarkNeedsReview"] for p in points] == still_open
    assert points[1]["description"] == "posterior commissure"
    back = read_landmarks(path)
    assert back.needs_review.tolist() == still_open and back.status == _STATUSES
    assert back.descriptions[0] == "anterior commissure"  # the note is the file's, not the landmark's


def test_slicer_sees_reviewed_landmarks_as_reviewed(tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML library) is not installed")
    path = tmp_path / "x.mrk.json"
    write_landmarks(path, _flagged())
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    n = node.GetNumberOfControlPoints()
    assert n == 6
    selected = [bool(node.GetNthControlPointSelected(i)) for i in range(n)]
    noted = [REVIEW_NOTE in node.GetNthControlPointDescription(i) for i in range(n)]
    assert selected == noted == [True, False, False, False, False, True]


def test_napari_export_clears_flags_of_reviewed_landmarks(tmp_path: Path) -> None:
    session = S.CorrectionSession(_flagged().copy(), image="case.nii.gz", model="m")
    session.landmarks.status = ["predicted"] * 5 + ["missing"]
    session.accept("PC")
    moved = session.landmarks.copy()
    moved.positions[2] += [2.0, 0.0, 0.0]
    session.edit(moved)
    paths = S.export_all(tmp_path / "case.csv", session.landmarks)
    rows = _rows(paths[0])
    assert (rows["AC"]["needs_review"], rows["AC"]["status"]) == ("1", "predicted")
    assert (rows["PC"]["needs_review"], rows["PC"]["status"]) == ("0", "verified")
    assert (rows["infracollicular sulcus"]["needs_review"], rows["infracollicular sulcus"]["status"]) == (
        "0", "corrected")
    assert rows["infracollicular sulcus"]["placed_by"] == "human"
    assert not any(r["needs_review"] == "1" and r["status"] in REVIEWED for r in rows.values())
    points = {p["label"]: p for p in json.loads(paths[2].read_text())["markups"][0]["controlPoints"]}
    assert points["AC"]["selected"] and REVIEW_NOTE in points["AC"]["description"]
    for name in ("PC", "infracollicular sulcus"):
        assert not points[name]["selected"] and REVIEW_NOTE not in points[name]["description"]
    # the autosave keeps what the model flagged (the layer draws it from there; undo brings it back)
    assert [e["needs_review"] for e in session.to_dict()["landmarks"]][:3] == [True, True, True]
