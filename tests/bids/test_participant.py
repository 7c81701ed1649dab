"""The participant level on a real small BIDS dataset (a tiny untrained model: plumbing, not accuracy)."""

from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest

from napari_dglandmark.bids import participant
from napari_dglandmark.bids.cli import main
from napari_dglandmark.bids.derivative import read_tsv
from napari_dglandmark.io import read_landmarks
from napari_dglandmark.io.csv_table import LANDMARK_COLUMNS

from .conftest import CORRUPT, T1W, T2W, derivative_naming_problems

pytestmark = pytest.mark.shared_data


def _run(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _sidecars(out):
    return sorted(p.relative_to(out).as_posix() for p in out.glob("sub-*/**/anat/*_afids.json"))


def test_a_run_writes_every_good_image_names_the_bad_one_and_resumes(bids_dataset, tmp_path, tiny_model_path,
                                                                       capsys):
    out = tmp_path / "out"
    code, err = _run(capsys, bids_dataset, out, "participant", "--suffix", "T1w", "T2w", "--model", tiny_model_path)
    assert code == 2  # one image failed
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and str(bids_dataset / CORRUPT) in errors[0] and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("dglandmark bids: 5 of 6 image(s) done") and err[-1].endswith(f"1 failed: {CORRUPT}")
    assert sum("] sub-" in line for line in err) == 5  # progress: one line per image done
    assert _sidecars(out) == [
        "sub-01/anat/sub-01_space-T1w_desc-dglandmark_afids.json",
        "sub-02/ses-1/anat/sub-02_ses-1_space-T1w_desc-dglandmark_afids.json",
        "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_run-2_space-T1w_desc-dglandmark_afids.json",
        "sub-03/anat/sub-03_space-T1w_desc-dglandmark_afids.json",
        "sub-03/anat/sub-03_space-T2w_desc-dglandmark_afids.json"]
    failure = json.loads((out / "logs/failed/sub-04_T1w.json").read_text())
    assert failure["Source"] == CORRUPT and failure["Error"] == errors[0].split("error: ", 1)[1]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"

    stem = out / "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_run-2_space-T1w_desc-dglandmark_afids"
    doc = json.loads(stem.with_suffix(".json").read_text())
    assert doc["Sources"] == [f"bids:raw:{T1W[2]}"] and doc["SourceEntities"] == {"sub": "02", "ses": "2",
                                                                                   "acq": "fast", "run": "2"}
    assert set(doc["Measurements"]) == {"AC-PC", "genu-splenium"} and doc["Measurements"]["AC-PC"]["Units"] == "mm"
    assert len(doc["ModelSHA256"]) == 64 and doc["LandmarkCount"] == 32
    fcsv, mrk = read_landmarks(stem.with_suffix(".fcsv")), read_landmarks(stem.with_suffix(".mrk.json"))
    rows = read_tsv(stem.with_suffix(".tsv"))
    header = stem.with_suffix(".tsv").read_text().split("\n", 1)[0].split("\t")
    assert header == [c for c in LANDMARK_COLUMNS if c in header] and {"confidence", "needs_review"} <= set(header)
    assert [r["landmark"] for r in rows] == fcsv.names == mrk.names and len(rows) == 32
    assert abs(float(rows[0]["x"]) - (-fcsv.positions[0, 0])) < 1e-6  # TSV in RAS, positions LPS inside
    assert doc["NeedsReview"] == [r["landmark"] for r in rows if r["needs_review"] == "1"]
    assert all(r["model_sha256"] == doc["ModelSHA256"] for r in rows)
    png = out / doc["Files"]["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary file

    # a re-run with --skip-existing skips what is done and tries the failed image again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "logs" not in p.parts}
    code, err = _run(capsys, bids_dataset, out, "participant", "--suffix", "T1w", "T2w", "--model",
                     tiny_model_path, "--skip-existing")
    assert code == 2 and sum(line.endswith(": skipped (done)") for line in err) == 5
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # once the bad file is replaced, the same command completes and clears the failure record
    shutil.copyfile(bids_dataset / T1W[0], bids_dataset / CORRUPT)
    code, err = _run(capsys, bids_dataset, out, "participant", "--suffix", "T1w", "T2w", "--model",
                     tiny_model_path, "--skip-existing", "--quiet")
    assert code == 0 and err[-1] == f"dglandmark bids: 1 of 6 image(s) done -> {out}; 5 skipped (done)"
    assert not any("] sub-" in line for line in err)  # --quiet: warnings and the closing line only
    assert not (out / "logs/failed/sub-04_T1w.json").exists() and len(_sidecars(out)) == 6

    # another model must not write into this derivative
    code, err = _run(capsys, bids_dataset, out, "participant", "--model", "afids32")
    assert code == 2 and [line for line in err if "error" in line] == err[-1:]
    assert "holds results of" in err[-1] and "use another OUTPUT_DIR" in err[-1]

    # every file is a BIDS derivative file (where BIDS's naming rules apply) or .bidsignore'd
    pytest.importorskip("bids_validator")
    assert derivative_naming_problems(out) == []
    assert (out / ".bidsignore").read_text().split() == ["figures/", "logs/", "*.html"]


def test_labels_select_and_only_one_image_is_held_at_a_time(bids_dataset, tmp_path, tiny_model_path, capsys,
                                                            monkeypatch):
    alive: list[weakref.ref] = []
    read = participant.read_volume

    def tracking_read(path, *args, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in alive), "an earlier image is still in memory"
        volume = read(path, *args, **kwargs)
        alive.append(weakref.ref(volume.array))
        return volume

    monkeypatch.setattr(participant, "read_volume", tracking_read)
    out = tmp_path / "out"
    code, err = _run(capsys, bids_dataset, out, "participant", "--participant-label", "sub-02", "03",
                     "--session-label", "2", "--suffix", "T1w", "T2w", "--model", tiny_model_path)
    assert code == 0, err
    # sub-02 has sessions (only ses-2 kept); sub-03 has none, so a session filter leaves it out
    assert _sidecars(out) == ["sub-02/ses-2/anat/sub-02_ses-2_acq-fast_run-2_space-T1w_desc-dglandmark_afids.json"]
    code, err = _run(capsys, bids_dataset, out, "participant", "--participant-label", "03", "--suffix", "T1w",
                     "T2w", "--model", tiny_model_path)
    assert code == 0 and len(alive) == 3 and len(_sidecars(out)) == 3
    assert T2W[0] in "\n".join(err)


def test_user_errors_are_one_line_and_exit_2(bids_dataset, tmp_path, tiny_model_path, capsys):
    for args, expected in [
        ((bids_dataset, tmp_path / "o", "participant", "--participant-label", "42"), "no participant sub-42"),
        ((tmp_path / "nothing", tmp_path / "o", "participant"), "BIDS dataset folder not found"),
        ((bids_dataset, bids_dataset, "participant", "--model", tiny_model_path), "must not be the BIDS dataset"),
        ((bids_dataset, tmp_path / "empty", "group"), "OUTPUT_DIR not found"),
    ]:
        code, err = _run(capsys, *args)
        assert code == 2 and len(err) == 1 and expected in err[0], (args, err)
