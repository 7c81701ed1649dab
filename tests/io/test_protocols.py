"""Bundled protocols: afids32 matches the real AFIDs files; fetal-biometry has 12 endpoints and 6 measurements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import Landmarks, read_landmarks
from napari_dglandmark.protocols import available_protocols, load_protocol, protocol_from_dict
from tests.conftest import GT_FCSV, RATER2_MRK


def test_bundled_protocols_listed() -> None:
    assert {"afids32", "fetal-biometry"} <= set(available_protocols())


def test_afids32_names_match_groundtruth_desc_column(shared_data: Path) -> None:
    protocol = load_protocol("afids32")
    assert len(protocol) == 32
    descs = []
    for line in GT_FCSV.read_text().splitlines():
        if not line.startswith("#"):
            descs.append(line.split(",")[12])
    assert [d.casefold() for d in descs] == [n.casefold() for n in protocol.names]


def test_afids32_conform_real_files(shared_data: Path) -> None:
    protocol = load_protocol("afids32")
    for path in (GT_FCSV, RATER2_MRK):  # RATER2_MRK spells some names in another case
        lm = read_landmarks(path)
        conformed = protocol.conform(lm, path)
        assert conformed.names == list(protocol.names)
        assert conformed.defined.all()
        for name in lm.names:
            np.testing.assert_array_equal(conformed.get(name), lm.get(name))


def test_afids32_acronyms_resolve() -> None:
    protocol = load_protocol("afids32")
    assert protocol.canonical("ics") == "infracollicular sulcus"
    assert protocol.canonical("  ac ") == "AC"


def test_fetal_biometry_layout() -> None:
    protocol = load_protocol("fetal-biometry")
    assert len(protocol.names) == 12
    assert [m.name for m in protocol.measurements] == ["CBD", "BBD", "TCD", "FOD", "HDV", "ADV"]
    for m in protocol.measurements:
        assert (m.a, m.b) == (f"{m.name}-1", f"{m.name}-2")
    assert len(set(protocol.names)) == 12 and len(protocol.colors) == 12


def test_measurements_match_hand_computed_distances() -> None:
    protocol = load_protocol("fetal-biometry")
    rng = np.random.default_rng(7)
    pos = rng.normal(0.0, 30.0, size=(12, 3))
    lm = Landmarks(list(protocol.names), pos)
    values = protocol.measure(lm)
    for k, name in enumerate(("CBD", "BBD", "TCD", "FOD", "HDV", "ADV")):
        a, b = pos[2 * k], pos[2 * k + 1]
        hand = float(np.sqrt(((a - b) ** 2).sum()))
        assert values[name] == pytest.approx(hand, abs=1e-12)
    # a 3-4-5 triangle, exactly
    pos[4], pos[5] = [1.0, 1.0, 1.0], [4.0, 5.0, 1.0]
    assert protocol.measure(Landmarks(list(protocol.names), pos))["TCD"] == 5.0


def test_measurement_with_missing_or_absent_endpoint_is_nan() -> None:
    protocol = load_protocol("fetal-biometry")
    lm = Landmarks(["TCD-1", "TCD-2", "CBD-1"], [[0, 0, 0], [np.nan] * 3, [1, 2, 3]])
    values = protocol.measure(lm)
    assert np.isnan(values["TCD"]) and np.isnan(values["CBD"])


def test_unknown_names_are_an_error() -> None:
    protocol = load_protocol("fetal-biometry")
    lm = Landmarks(["TCD-1", "nose tip"], [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(DGLandmarkError, match="nose tip") as info:
        protocol.conform(lm, "case.fcsv")
    assert str(info.value).startswith("case.fcsv: ") and "\n" not in str(info.value)


def test_conform_orders_and_fills_missing() -> None:
    protocol = load_protocol("fetal-biometry")
    lm = Landmarks(["tcd-2", "TCD-1"], [[1, 2, 3], [4, 5, 6]])
    out = protocol.conform(lm)
    assert out.names == list(protocol.names)
    np.testing.assert_array_equal(out.get("TCD-2"), [1, 2, 3])
    assert out.status[protocol.index_of("CBD-1")] == "missing"
    with pytest.raises(DGLandmarkError, match="lacks"):
        protocol.conform(lm, allow_missing=False)


def test_unknown_protocol_and_bad_protocol_files(tmp_path: Path) -> None:
    with pytest.raises(DGLandmarkError, match="unknown protocol"):
        load_protocol("no-such-protocol")
    with pytest.raises(DGLandmarkError, match="no such protocol file"):
        load_protocol(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DGLandmarkError, match="malformed protocol JSON"):
        load_protocol(bad)
    with pytest.raises(DGLandmarkError, match="unknown landmark"):
        protocol_from_dict({"name": "p", "landmarks": [{"name": "A"}],
                            "measurements": [{"name": "m", "from": "A", "to": "B"}]})
    with pytest.raises(DGLandmarkError, match="duplicate"):
        protocol_from_dict({"name": "p", "landmarks": [{"name": "A"}, {"name": "a"}]})
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps({"name": "two", "landmarks": [{"name": "A"}, {"name": "B"}],
                                  "measurements": [{"name": "AB", "from": "A", "to": "B"}]}))
    assert load_protocol(custom).measurement_triples() == [("AB", "A", "B")]
