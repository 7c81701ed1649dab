"""The group level: the QC report from a real derivative, worst first, outliers, the snapshot, 500 images, a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from napari_dglandmark.bids.cli import main
from napari_dglandmark.bids.cohort import Cohort, Record, mark_outliers, read_cohort
from napari_dglandmark.bids.report import REPORT_NAME, render_report
from napari_dglandmark.bids.snapshot import FLAG_COLOR, OK_COLOR, render_snapshot
from napari_dglandmark.io import read_volume
from napari_dglandmark.io.landmarks import Landmarks

from .conftest import CORRUPT, STROKE

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _payload(text: str) -> dict:
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert found
    return json.loads(found.group(1))


@pytest.mark.shared_data
def test_group_report_of_a_real_derivative_needs_only_the_derivative(bids_dataset, tmp_path, tiny_model_path,
                                                                     capsys):
    out = tmp_path / "out"
    assert main([str(bids_dataset), str(out), "participant", "--suffix", "T1w", "T2w", "--model",
                 str(tiny_model_path), "--quiet"]) == 2  # the corrupt image
    shutil.rmtree(bids_dataset)  # the group level reads the derivative alone (it may run elsewhere, later)
    capsys.readouterr()
    assert main([str(bids_dataset), str(out), "group"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dglandmark bids: report of 6 image(s) (1 failed) -> {out / REPORT_NAME}"]
    text = (out / REPORT_NAME).read_text()
    data = _payload(text)
    records = data["records"]
    assert len(records) == 6 and records[0]["error"] and CORRUPT in records[0]["source"]  # worst first
    assert data["measurements"] == ["AC-PC", "genu-splenium"]
    done = records[1:]
    assert {r["ses"] for r in done} == {"", "1", "2"} and sorted(r["suffix"] for r in done) == ["T1w"] * 4 + ["T2w"]
    for record in done:
        assert (out / record["png"]).is_file() and record["n"] == 32
        assert set(record["meas"]) == {"AC-PC", "genu-splenium"}
        assert all((out / path).is_file() for path in record["files"].values())
    ranks = [(bool(r["error"]), bool(r["warning"]), len(r["outliers"]), r["nflag"]) for r in records]
    assert ranks == sorted(ranks, key=lambda k: (not k[0], not k[1], -k[2], -k[3]))  # worst first
    assert text.count('aria-label="AC-PC distribution"') == 1 and "Failed (1)" in text
    assert "<img" not in text  # pictures are made by the script, one page at a time, loading lazily

    # --participant-label selects the report's participants
    assert main([str(bids_dataset), str(out), "group", "--participant-label", "03"]) == 0
    data = _payload((out / REPORT_NAME).read_text())
    assert sorted(r["label"] for r in data["records"]) == ["sub-03 T1w", "sub-03 T2w"]


def _record(n: int, acpc: float | None, *, error: str = "", warning: str = "", flagged: int = 0) -> Record:
    names = [f"L{i}" for i in range(32)]
    record = Record(f"k{n:03d}", f"{n:03d}", None, "T1w", {"sub": f"{n:03d}"}, f"sub-{n:03d}/anat/x_T1w.nii.gz",
                    warning=warning, error=error, landmarks=32, detected=32,
                    flagged=names[:flagged], confidence={m: 0.9 for m in names},
                    snapshot="figures/shot.png")
    if acpc is not None:
        record.measurements = {"AC-PC": acpc}
    return record


def test_outliers_are_robust_and_the_order_is_worst_first():
    records = [_record(n, 25.0 + 0.3 * (n % 7)) for n in range(20)]
    records[3].measurements["AC-PC"] = 43.0  # a wrong landmark
    records[5].flagged = ["AC", "PC"]
    records[7].warning = "the landmarks do not form a brain's configuration"
    records.append(_record(99, None, error="sub-099: not a NIfTI file"))
    mark_outliers([r for r in records if not r.error], ["AC-PC"])
    assert [r.key for r in records if r.outliers] == ["k003"]
    records.sort(key=Record.severity)
    assert [r.key for r in records[:4]] == ["k099", "k007", "k003", "k005"]
    svg = render_report(Cohort(records, {"Name": "napari-dglandmark"}, ["AC-PC"]))
    dots = re.findall(r'<circle [^>]*class="(dot(?: out)?)" data-i="(\d+)"', svg)
    assert [int(i) for cls, i in dots if cls == "dot out"] == [2]  # record k003, ranked third
    assert svg.count('class="limit"') == 2  # the outlier limits are drawn


def test_read_cohort_survives_a_broken_sidecar(tmp_path):
    anat = tmp_path / "sub-01/anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_space-T1w_desc-dglandmark_afids.json").write_text("{truncated")
    cohort = read_cohort(tmp_path)
    assert len(cohort.records) == 1 and "unreadable sidecar" in cohort.records[0].error


def test_the_report_stays_light_for_500_images():
    records = [_record(n, 24.0 + (n % 50) / 10) for n in range(500)]
    text = render_report(Cohort(records, {"Name": "napari-dglandmark", "Version": "0"}, ["AC-PC"]))
    assert len(text.encode()) < 600_000  # one JSON row per image; no picture is inlined
    assert "<img" not in text and 'loading:"lazy"' in text and "const ROWS=50,CARDS=24" in text
    assert len(_payload(text)["records"]) == 500


@pytest.mark.shared_data
def test_snapshot_marks_flagged_landmarks(shared_data, tmp_path):
    volume = read_volume(STROKE / "stroke_T1.nii.gz")
    centre = volume.index_to_physical((np.asarray(volume.geometry.size, float) - 1) / 2)
    positions = centre + np.array([[0.0, 0, 0], [10, 0, 0], [0, 12, 0], [0, 0, 15]])
    colours = {}
    for flags in ([False] * 4, [False, True, False, True]):
        landmarks = Landmarks(["AC", "PC", "ICS", "PMJ"], positions, needs_review=np.array(flags))
        path = tmp_path / f"{sum(flags)}.png"
        render_snapshot(path, volume, landmarks)
        from matplotlib.image import imread

        pixels = (imread(path)[..., :3] * 255).round().astype(int).reshape(-1, 3)
        colours[sum(flags)] = {c: int((np.abs(pixels - _rgb(c)).sum(1) < 40).sum()) for c in (OK_COLOR, FLAG_COLOR)}
    assert colours[0][OK_COLOR] > 0 and colours[0][FLAG_COLOR] == 0
    assert colours[2][FLAG_COLOR] > 0


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium) for the real-browser check")
def test_the_report_runs_in_a_real_browser(tmp_path):
    """Headless Chromium runs the report's script: the table's first page, the cards, paging."""
    records = [_record(n, 24.0 + (n % 50) / 10) for n in range(500)]
    records.insert(0, _record(999, None, error="sub-999/anat/sub-999_T1w.nii.gz: not a NIfTI file"))
    (tmp_path / REPORT_NAME).write_text(render_report(Cohort(records, {"Name": "napari-dglandmark"}, ["AC-PC"])))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           (tmp_path / REPORT_NAME).as_uri()], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    body = dom.split('<tbody id="tbody">', 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr") == 50 and '<td class="bad"' in body.split("</tr>", 1)[0]  # failed first
    assert dom.count('class="card"') == 24 and dom.count('loading="lazy"') == 24
    assert "page 1 of 11" in dom and "page 1 of 21" in dom  # table pages of 50, cards pages of 24
    assert "501 of 501 images" in dom
