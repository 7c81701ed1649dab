"""Landmark files: .mrk.json, .fcsv, CSV and the seed layout round-trip losslessly; output matches Slicer's schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from napari_dglandmark.io import (
    Landmarks,
    read_csv_table,
    read_landmarks,
    read_seed_case,
    write_csv,
    write_landmarks,
    write_seed_case,
)
from napari_dglandmark.io.csv_table import format_rows, landmark_rows
from napari_dglandmark.io.markups_json import markups_document, write_line_json
from napari_dglandmark.io.volume import Geometry, lps_to_ras
from napari_dglandmark.protocols import load_protocol
from tests.conftest import CT_DIR, GT_FCSV, RATER2_FCSV, RATER2_MRK, SCHEMA

_NAN3 = [np.nan] * 3


def _sample() -> Landmarks:
    """Awkward on purpose: a missing point, odd floats, commas and quotes, every status."""
    ras = np.array([[0.1, -2.000000000000001, 1e-9], [123.456789012345, 0.0, -77.5], _NAN3,
                    [-1.0 / 3.0, 2.0 / 7.0, 1e5], [5.0, 6.0, 7.0]])
    return Landmarks.from_ras(
        ["AC", "left, \"quoted\" name", "Missing one", "verified pt", "added pt"], ras,
        descriptions=["anterior commissure", "", "not placed", "ünïcode desc", ""],
        confidence=[0.93, np.nan, np.nan, 0.125, 1.0],
        status=["predicted", "corrected", "missing", "verified", "added"],
    )


def _same(a: Landmarks, b: Landmarks, atol: float = 0.0, descriptions: bool = True) -> None:
    assert a.names == b.names
    np.testing.assert_allclose(a.positions, b.positions, atol=atol, rtol=0)  # NaN == NaN here
    if descriptions:
        assert a.descriptions == b.descriptions


# --------------------------------------------------------------------------- .mrk.json

@pytest.mark.parametrize("coords", ["RAS", "LPS"])
def test_mrk_json_round_trip(tmp_path: Path, coords: str) -> None:
    lm = _sample()
    path = tmp_path / "x.mrk.json"
    write_landmarks(path, lm, coords=coords)
    doc = json.loads(path.read_text())
    assert doc["markups"][0]["coordinateSystem"] == coords
    first = doc["markups"][0]["controlPoints"][0]["position"]
    np.testing.assert_array_equal(first, lm.positions_in(coords)[0])
    back = read_landmarks(path)
    _same(lm, back)
    assert back.status == lm.status
    np.testing.assert_array_equal(back.confidence, lm.confidence)
    missing = doc["markups"][0]["controlPoints"][2]
    assert missing["positionStatus"] == "undefined" and "position" not in missing


def test_mrk_json_missing_coordinate_system_means_lps(tmp_path: Path) -> None:
    path = tmp_path / "m.mrk.json"
    path.write_text(json.dumps({"@schema": "x", "markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "A", "position": [1.0, 2.0, 3.0]},
        {"label": "B", "positionStatus": "undefined"},
        {"label": "C", "position": "", "positionStatus": "undefined"},  # how Slicer writes it
    ]}]}))
    lm = read_landmarks(path)
    np.testing.assert_array_equal(lm.get("A"), [1.0, 2.0, 3.0])
    assert lm.status == ["defined", "missing", "missing"]
    assert np.isnan(lm.get("B")).all() and np.isnan(lm.get("C")).all()


def test_mrk_json_ras_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "r.mrk.json"
    path.write_text(json.dumps({"@schema": "x", "markups": [{"type": "Fiducial", "coordinateSystem": "RAS",
                                "controlPoints": [{"label": "A", "position": [1.0, 2.0, 3.0]}]}]}))
    np.testing.assert_array_equal(read_landmarks(path).get("A"), [-1.0, -2.0, 3.0])


def test_mrk_json_numeric_labels_take_description(shared_data: Path) -> None:
    lm = read_landmarks(RATER2_MRK)
    ref = read_landmarks(RATER2_FCSV)
    assert len(lm) == 32
    assert [n.casefold() for n in lm.names] == [n.casefold() for n in ref.names]
    assert lm.names[0] == "AC"
    np.testing.assert_allclose(lm.positions, ref.positions, atol=1e-3)


def test_mrk_json_lines_with_measurements(tmp_path: Path) -> None:
    lm = _sample()
    path = tmp_path / "with_lines.mrk.json"
    write_landmarks(path, lm, "RAS", measurements=[("AC-V", "AC", "verified pt"), ("gap", "AC", "Missing one")])
    doc = json.loads(path.read_text())
    assert [m["type"] for m in doc["markups"]] == ["Fiducial", "Line", "Line"]
    line = doc["markups"][1]
    assert [p["label"] for p in line["controlPoints"]] == ["AC", "verified pt"]
    assert "measurements" not in doc["markups"][2]  # no length without both endpoints
    back = read_landmarks(path)
    _same(lm, back)  # the points come from the point list, not the lines
    expected = float(np.linalg.norm(lm.get("AC") - lm.get("verified pt")))
    assert back.measurements == {"AC-V": pytest.approx(expected, abs=1e-12)}


def test_mrk_json_line_only_file(tmp_path: Path) -> None:
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0, 3.0])
    path = tmp_path / "TCD.mrk.json"
    write_line_json(path, "TCD", a, b, ["TCD-1", "TCD-2"], coords="RAS")
    lm = read_landmarks(path)
    assert lm.names == ["TCD-1", "TCD-2"]
    np.testing.assert_allclose(lm.positions, [a, b], atol=1e-12)
    assert lm.measurements["TCD"] == pytest.approx(5.0)


# --------------------------------------------------------------------------- .fcsv

def test_fcsv_groundtruth_afids(shared_data: Path) -> None:
    lm = read_landmarks(GT_FCSV)
    assert len(lm) == 32
    assert lm.names[:2] == ["AC", "PC"] and lm.descriptions[0] == ""  # desc became the name
    # first row: RAS -0.204861407692308,2.72288076923077,-4.88105282051282
    np.testing.assert_array_equal(lm.get("AC"), [0.204861407692308, -2.72288076923077, -4.88105282051282])


def test_fcsv_slicer_511_lps_extra_columns(shared_data: Path) -> None:
    lm = read_landmarks(CT_DIR / "F_1.fcsv")
    assert lm.names == ["F_1-1", "F_1-2", "F_1-7", "Different name", "F_1-9", "F_1-10", "F_1-11", "F_1-12",
                        "F_1-13", "F_1-14", "F_1-47", "F_1-51"]
    assert lm.descriptions[1] == "Some description" and lm.descriptions[6] == "Another description"
    np.testing.assert_array_equal(lm.positions[0], [-6.282824184397157, -51.06216973995272, -10.2143])
    np.testing.assert_array_equal(lm.get("F_1-51"), [77.41355846390559, -17.021116613493888, -10.214302062988281])
    assert all(s == "defined" for s in lm.status)


@pytest.mark.parametrize("code,flip", [("0", True), ("RAS", True), ("1", False), ("LPS", False), (None, False)])
def test_fcsv_coordinate_system_header(tmp_path: Path, code: str | None, flip: bool) -> None:
    header = "# Markups fiducial file version = 4.11\n"
    if code is not None:
        header += f"# CoordinateSystem = {code}\n"
    header += "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    path = tmp_path / "c.fcsv"
    path.write_text(header + "vtkMRMLMarkupsFiducialNode_1,1.5,-2.5,3,0,0,0,1,1,1,0,1,AC,\n")
    lm = read_landmarks(path)
    assert lm.names == ["AC"]
    expected = [-1.5, 2.5, 3.0] if flip else [1.5, -2.5, 3.0]
    np.testing.assert_array_equal(lm.get("AC"), expected)


@pytest.mark.parametrize("coords", ["RAS", "LPS"])
def test_fcsv_round_trip(tmp_path: Path, coords: str) -> None:
    lm = _sample()
    path = tmp_path / "x.fcsv"
    write_landmarks(path, lm, coords=coords)
    text = path.read_text()
    assert f"# CoordinateSystem = {coords}" in text
    back = read_landmarks(path)
    # .fcsv leaves missing points out; every placed point comes back bit-exact
    _same(lm.reordered([n for i, n in enumerate(lm.names) if lm.defined[i]]), back)


def test_fcsv_groundtruth_round_trip_exact(tmp_path: Path, shared_data: Path) -> None:
    lm = read_landmarks(GT_FCSV)
    for coords in ("RAS", "LPS"):
        write_landmarks(tmp_path / f"gt_{coords}.fcsv", lm, coords)
        _same(lm, read_landmarks(tmp_path / f"gt_{coords}.fcsv"))


def test_fcsv_slicer_position_status_column(tmp_path: Path) -> None:
    """Slicer 5 writes an undefined point as 0,0,0 plus positionStatus 0 after the declared columns."""
    path = tmp_path / "s.fcsv"
    path.write_text("# Markups fiducial file version = 5.11\n# CoordinateSystem = LPS\n"
                    "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                    "1,1,2,3,0,0,0,1,1,1,0,A,,,2,0\n2,0,0,0,0,0,0,1,1,1,0,B,,,0,0\n")
    lm = read_landmarks(path)
    np.testing.assert_array_equal(lm.get("A"), [1.0, 2.0, 3.0])
    assert np.isnan(lm.get("B")).all() and lm.status == ["defined", "missing"]


# --------------------------------------------------------------------------- CSV

def test_csv_default_ras_round_trip(tmp_path: Path) -> None:
    lm = _sample()
    lm.image, lm.model = "case01.nii.gz", "resunet-v1"
    path = tmp_path / "x.csv"
    write_landmarks(path, lm)
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[:5] == ["landmark", "x", "y", "z", "coordinate_system"]
    assert {"confidence", "status", "image", "model"} <= set(lines[0].split(","))
    assert lines[1].split(",")[4] == "RAS"
    back = read_landmarks(path)
    _same(lm, back, descriptions=False)  # the CSV has no description column
    assert back.status == lm.status
    np.testing.assert_array_equal(back.confidence, lm.confidence)
    assert (back.image, back.model) == ("case01.nii.gz", "resunet-v1")


def test_csv_lps_on_request_and_ijk(tmp_path: Path) -> None:
    lm = _sample()
    geometry = Geometry(shape=(10, 20, 30), spacing=(0.5, 0.5, 2.0), origin=(10.0, -5.0, 3.0),
                        direction=np.diag([-1.0, -1.0, 1.0]))
    path = tmp_path / "x.csv"
    write_csv(path, lm, "LPS", geometry)
    table = read_csv_table(path)
    back = table[""]
    _same(lm, back, descriptions=False)
    import csv
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["coordinate_system"] == "LPS"
    assert float(rows[0]["x"]) == lm.positions[0, 0]
    ijk = np.array([[float(r["i"]), float(r["j"]), float(r["k"])] for r in rows if r["i"]])
    np.testing.assert_allclose(geometry.index_to_physical(ijk), lm.positions[lm.defined], atol=1e-9)


def test_csv_minimal_header_defaults(tmp_path: Path) -> None:
    path = tmp_path / "hand.csv"
    path.write_text("landmark,x,y,z,coordinate_system\nAC,1,2,3,\nPC,1,2,3,LPS\nX,,,,RAS\n")
    lm = read_landmarks(path)
    np.testing.assert_array_equal(lm.get("AC"), [-1.0, -2.0, 3.0])  # empty system: RAS
    np.testing.assert_array_equal(lm.get("PC"), [1.0, 2.0, 3.0])
    assert lm.status == ["defined", "defined", "missing"]


def test_csv_table_several_images(tmp_path: Path) -> None:
    a, b = _sample(), _sample()
    a.image, b.image = "a.nii.gz", "b.nii.gz"
    b.positions = b.positions + 1.0
    path = tmp_path / "t.csv"
    path.write_text(format_rows(landmark_rows(a) + landmark_rows(b)))
    table = read_csv_table(path)
    assert sorted(table) == ["a.nii.gz", "b.nii.gz"]
    _same(b, table["b.nii.gz"], descriptions=False)


# --------------------------------------------------------------------------- seed layout

def test_seed_layout_round_trip(tmp_path: Path) -> None:
    protocol = load_protocol("fetal-biometry")
    rng = np.random.default_rng(3)
    lm = Landmarks.from_ras(list(protocol.names), rng.normal(0, 40, size=(12, 3)))
    written = write_seed_case(tmp_path, lm, protocol.measurement_triples())
    assert sorted(p.name for p in written) == sorted(f"{m}.mrk.json" for m in ("CBD", "BBD", "TCD", "FOD", "HDV", "ADV"))
    back = read_landmarks(tmp_path)  # a folder is a seed case
    assert sorted(back.names) == sorted(lm.names)
    np.testing.assert_allclose(back.reordered(lm.names).positions, lm.positions, atol=1e-12)
    expected = protocol.measure(lm)
    assert back.measurements == pytest.approx(expected, abs=1e-9)
    doc = json.loads((tmp_path / "TCD.mrk.json").read_text())
    assert doc["markups"][0]["type"] == "Line" and doc["markups"][0]["coordinateSystem"] == "RAS"
    np.testing.assert_allclose(doc["markups"][0]["controlPoints"][0]["position"], lps_to_ras(lm.get("TCD-1")))


def test_seed_layout_unlabelled_endpoints(tmp_path: Path) -> None:
    (tmp_path / "HDV.mrk.json").write_text(json.dumps({"@schema": "x", "markups": [{"type": "Line", "controlPoints": [
        {"position": [0, 0, 0]}, {"position": [0, 0, 12.5]}],
        "measurements": [{"name": "length", "value": 12.5}]}]}))
    lm = read_seed_case(tmp_path)
    assert lm.names == ["HDV-1", "HDV-2"]
    assert lm.measurements == {"HDV": 12.5}  # named after the file, not the unnamed Line


# --------------------------------------------------------------------------- schema

def _documents(tmp_path: Path) -> list[dict]:
    lm = _sample()
    docs = [markups_document(lm, c, measurements=[("m", "AC", "added pt"), ("n", "AC", "Missing one")])
            for c in ("RAS", "LPS")]
    write_line_json(tmp_path / "L.mrk.json", "L", lm.get("AC"), lm.get("added pt"), ["L-1", "L-2"])
    docs.append(json.loads((tmp_path / "L.mrk.json").read_text()))
    write_landmarks(tmp_path / "w.mrk.json", lm, "RAS")
    docs.append(json.loads((tmp_path / "w.mrk.json").read_text()))
    return docs


def test_written_json_validates_against_slicer_schema(tmp_path: Path, shared_data: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for doc in _documents(tmp_path):
        errors = sorted(validator.iter_errors(doc), key=str)
        assert not errors, errors[0].message
    # the schema does bite: a wrong coordinate system is rejected
    bad = _documents(tmp_path)[0]
    bad["markups"][0]["coordinateSystem"] = "XYZ"
    assert list(validator.iter_errors(bad))


_POINT_TYPES = {"id": str, "label": str, "description": str, "associatedNodeID": str, "positionStatus": str,
                "selected": bool, "locked": bool, "visibility": bool}


def test_written_json_keys_and_types_by_hand(tmp_path: Path) -> None:
    for doc in _documents(tmp_path):
        assert set(doc) >= {"@schema", "markups"}
        assert isinstance(doc["@schema"], str) and doc["@schema"].startswith("https://")
        assert isinstance(doc["markups"], list) and doc["markups"]
        for markup in doc["markups"]:
            assert markup["type"] in ("Fiducial", "Line")
            assert markup["coordinateSystem"] in ("LPS", "RAS")
            assert markup["coordinateUnits"] == "mm"
            assert isinstance(markup["name"], str) and isinstance(markup["locked"], bool)
            assert isinstance(markup["controlPoints"], list)
            if markup["type"] == "Line":
                assert len(markup["controlPoints"]) == 2
            for point in markup["controlPoints"]:
                for key, kind in _POINT_TYPES.items():
                    assert isinstance(point[key], kind), (key, point)
                assert point["positionStatus"] in ("defined", "undefined")
                if point["positionStatus"] == "defined":
                    pos = point["position"]
                    assert len(pos) == 3 and all(type(v) is float and np.isfinite(v) for v in pos)
                    assert len(point["orientation"]) == 9
                else:
                    assert "position" not in point
                for key in ("dglandmarkConfidence",):
                    if key in point:
                        assert type(point[key]) is float
            for item in markup.get("measurements", []):
                assert item["name"] == "length" and type(item["value"]) is float and item["units"] == "mm"
                assert isinstance(item["enabled"], bool)
        json.dumps(doc, allow_nan=False)  # no NaN / Infinity tokens, which strict JSON readers reject
