"""Evaluation with a known answer: predictions = truth + known offsets; failures; files written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_dglandmark.io import Landmarks
from training.evaluate import (
    CURVE_RADII,
    Evaluation,
    landmark_errors,
    sdr,
    snapshot,
    summarise,
    summarise_errors,
    write_report,
)

from .test_data import phantom

NAMES = ["A", "B", "C"]


def _known():
    """Two cases; errors (mm): case one 0.5, 1.5, 2.5; case two 3.0, a failure, no truth."""
    truth1 = Landmarks(NAMES, np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]], float))
    pred1 = Landmarks(NAMES, truth1.positions + np.array([[0.5, 0, 0], [0, 1.5, 0], [0, 0, -2.5]]))
    truth2 = Landmarks(NAMES, np.array([[1, 1, 1], [2, 2, 2], [np.nan] * 3]))
    pred2 = Landmarks(NAMES, np.array([[1 + 1.8, 1 + 2.4, 1], [np.nan] * 3, [5, 5, 5]]))  # |(1.8, 2.4, 0)| = 3
    ev = Evaluation(NAMES)
    ev.add("one", truth1, pred1)
    ev.add("two", truth2, pred2)
    return ev


def test_known_offsets_give_hand_computed_metrics(tmp_path):
    ev = _known()
    errors = ev.errors
    np.testing.assert_allclose(errors[0], [0.5, 1.5, 2.5])
    assert errors[1, 0] == pytest.approx(3.0) and np.isinf(errors[1, 1]) and np.isnan(errors[1, 2])
    m = ev.metrics()
    # placed: 0.5, 1.5, 2.5, 3.0 -> MRE 1.875, median 2.0; 5 evaluated, 1 failure
    assert m["n"] == 5 and m["failures"] == 1
    assert m["mre_mm"] == pytest.approx(1.875) and m["median_mm"] == pytest.approx(2.0)
    assert m["std_mm"] == pytest.approx(np.std([0.5, 1.5, 2.5, 3.0]))
    # SDR over 5 (the failure counts against every radius): 1 mm 1/5, 2 mm 2/5, 3 mm 4/5, 6 mm 4/5
    assert m["sdr_mm"] == pytest.approx({"1": 0.2, "2": 0.4, "3": 0.8, "4": 0.8, "5": 0.8, "6": 0.8})
    curve = dict(zip(m["sdr_curve"]["radius_mm"], m["sdr_curve"]["sdr"], strict=True))
    assert len(curve) == 61 and curve[0.0] == 0 and curve[0.4] == 0 and curve[0.5] == pytest.approx(0.2)
    assert curve[1.4] == pytest.approx(0.2) and curve[2.5] == pytest.approx(0.6) and curve[6.0] == pytest.approx(0.8)
    per = {row["landmark"]: row for row in ev.per_landmark()}
    assert per["A"]["mre_mm"] == pytest.approx(1.75) and per["A"]["n"] == 2
    assert per["B"]["failures"] == 1 and per["B"]["mre_mm"] == pytest.approx(1.5) and per["B"]["sdr_2mm"] == 0.5
    assert per["C"]["n"] == 1 and per["C"]["sdr_3mm"] == 1.0

    metrics = write_report(ev, tmp_path, {"model": "m"})
    for name in ("metrics.json", "per_landmark.csv", "predictions.csv", "sdr_curve.png"):
        assert (tmp_path / name).stat().st_size > 0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["mre_mm"] == pytest.approx(1.875) and on_disk["failures"] == 1 and on_disk["model"] == "m"
    assert on_disk["sdr_mm"]["2"] == pytest.approx(0.4) and metrics["n_cases"] == 2
    preds = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(preds) == 6 and preds[4]["error_mm"] == "failure"
    assert float(preds[0]["true_r"]) == 0.0 and float(preds[1]["pred_a"]) == pytest.approx(-1.5)  # RAS = -LPS y


def test_failure_policy_helpers():
    assert sdr(np.array([1.0, np.inf, np.nan]), 10.0) == 0.5
    s = summarise(np.array([np.inf, np.inf]))
    assert s["failures"] == 2 and np.isnan(s["mre_mm"]) and s["sdr_6mm"] == 0.0
    stats = summarise_errors(np.array([0.5, 1.5, np.inf, np.nan]))
    assert stats["mre"] == 1.0 and stats["failures"] == 1 and stats["sdr"][2.0] == pytest.approx(2 / 3)
    assert CURVE_RADII[0] == 0.0 and CURVE_RADII[-1] == 6.0 and len(CURVE_RADII) == 61
    t = Landmarks(["x", "y"], np.zeros((2, 3)))
    p = Landmarks(["Y", "X"], np.array([[0, 0, 2.0], [np.nan] * 3]))  # names matched case-insensitively
    np.testing.assert_array_equal(landmark_errors(t, p, ["x", "y"]), [np.inf, 2.0])


def test_snapshot_png(tmp_path):
    vol, lms, _ = phantom(0)
    pred = lms.copy()
    pred.positions = pred.positions + 1.0
    pred.positions[1] = np.nan
    snapshot(vol, lms, pred, tmp_path / "case.png", "case")
    assert (tmp_path / "case.png").read_bytes()[:4] == b"\x89PNG"
