"""Site adaptation (training.adapt, ``dglandmark-train adapt``) on a tiny model and tiny cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark._sample_data import SAMPLE_LANDMARKS, SAMPLE_VOLUME
from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_landmarks, read_volume, write_landmarks
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import write_volume
from napari_dglandmark.model.checkpoint import file_sha256, load_checkpoint, read_metadata
from napari_dglandmark.model.inference import Detector
from training.adapt import (
    AdaptCase,
    AdaptOptions,
    adapt,
    cases_from_dataset,
    check_cases,
    count_reviewed,
    reviewed,
)
from training.cli import main
from training.synth import Deformation, deform


def make_site(root: Path, n: int = 3, statuses: bool = True) -> Path:
    """``n`` deformed copies of the sample as image + .mrk.json pairs; with ``statuses`` half the
    landmarks are verified/corrected (the rest predicted, i.e. unreviewed)."""
    root.mkdir(parents=True, exist_ok=True)
    volume, truth = read_volume(SAMPLE_VOLUME), read_landmarks(SAMPLE_LANDMARKS)
    for s in range(n):
        vol, lms = deform(volume, truth, np.random.default_rng(s), Deformation(rotation_deg=5, elastic_mm=1.0))
        if statuses:
            lms.status = [("verified" if k % 4 else "corrected") if k % 2 == 0 else "predicted"
                          for k in range(len(lms))]
        write_volume(vol, root / f"scan{s}.nii.gz")
        write_landmarks(root / f"scan{s}.mrk.json", lms)
    return root


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


FAST = ["--coarse-steps", "3", "--fine-steps", "6", "--device", "cpu"]


def test_reviewed_landmarks_only():
    lms = Landmarks(["a", "b", "c", "d"], np.arange(12.0).reshape(4, 3),
                    status=["predicted", "verified", "corrected", "added"])
    used = reviewed(lms)
    assert np.isnan(used.positions[0]).all() and used.defined[1:].all() and count_reviewed(lms) == 3
    plain = Landmarks(["a", "b"], np.zeros((2, 3)))  # an annotation file without review statuses: all count
    assert count_reviewed(plain) == 2


def test_cli_adapts_with_provenance_and_leaves_the_base_alone(tmp_path, tiny_model_path, capsys):
    data = make_site(tmp_path / "site", 3)
    base_hash = file_sha256(tiny_model_path)
    out = tmp_path / "adapted.safetensors"
    assert main(["adapt", "--model", str(tiny_model_path), "--data", str(data), "--out", str(out), *FAST]) == 0
    assert file_sha256(tiny_model_path) == base_hash
    printed = capsys.readouterr().out
    assert "held-back case scan2" in printed and str(out) in printed
    meta = read_metadata(out)
    record = meta["adaptation"]
    assert record["base_model"] == {"name": "tiny", "file": tiny_model_path.name, "sha256": base_hash,
                                    "created": read_metadata(tiny_model_path)["created"]}
    assert [c["name"] for c in record["cases"]] == ["scan0", "scan1", "scan2"]
    assert [c["role"] for c in record["cases"]] == ["training", "training", "held-back"]
    for c in record["cases"]:
        assert c["image_sha256"] == file_sha256(data / c["image_file"])
        assert c["landmarks_sha256"] == file_sha256(data / c["landmarks_file"])
        assert c["reviewed_landmarks"] == 16  # the predicted half does not count
    assert "pixel" not in json.dumps(record) and len(json.dumps(meta)) < 200_000  # names and hashes, not images
    assert record["steps"]["coarse"] <= 3 and 0 < record["steps"]["fine"] <= 6
    err = record["error_mm"]
    assert err["held_back"] and np.isfinite(err["before"]) and np.isfinite(err["after"])
    assert err["after"] <= err["before"]  # the held-back check keeps the base weights when nothing helped
    assert record["date"] and meta["model_name"] == "adapted"
    assert meta["landmark_names"] == read_metadata(tiny_model_path)["landmark_names"]
    det = Detector(out, device="cpu")  # the adapted file is a working detection model
    assert len(det.detect(read_volume(data / "scan0.nii.gz"))) == 32
    assert record["rehearsal"] == SAMPLE_VOLUME.name  # the tiny model has the AFIDs: the template is rehearsed


def test_rehearsal_only_for_the_bundled_templates_landmarks():
    from napari_dglandmark.model.pipeline import PipelineConfig
    from training.adapt import rehearsal_case

    names = read_landmarks(SAMPLE_LANDMARKS).names
    case = rehearsal_case(list(reversed(names)), PipelineConfig())
    assert case is not None and np.isfinite(case.landmarks).all() and len(case.landmarks) == len(names)
    assert rehearsal_case(names[:5], PipelineConfig()) is None


def test_training_changes_the_weights(tmp_path, tiny_model_path):
    data = make_site(tmp_path / "site", 2)
    out = tmp_path / "a.safetensors"
    result = adapt(tiny_model_path, cases_from_dataset(data), out,
                   AdaptOptions(coarse_steps=2, fine_steps=4, device="cpu"))
    assert result.evaluated_on.startswith("the 2 training case(s)") and result.stopped_by == "steps"
    assert result.steps == {"coarse": 2, "fine": 4}
    before, _ = load_checkpoint(tiny_model_path)
    after, _ = load_checkpoint(out)
    moved = [k for k, v in after.state_dict().items() if not np.allclose(v.numpy(), before.state_dict()[k].numpy())]
    assert any(k.startswith("fine.") for k in moved)
    # coarse steps are kept only when they did not make the check worse (else the base coarse network stays)
    kept = read_metadata(out)["adaptation"]["coarse_stage_kept"]
    assert isinstance(kept, bool) and any(k.startswith("coarse.") for k in moved) == kept


def test_progress_and_cancel(tmp_path, tiny_model_path):
    from napari_dglandmark.model.inference import Cancelled

    cases = cases_from_dataset(make_site(tmp_path / "site", 1))
    seen: list[tuple[int, int]] = []
    out = tmp_path / "a.safetensors"
    adapt(tiny_model_path, cases, out, AdaptOptions(coarse_steps=0, fine_steps=10, device="cpu"),
          progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    calls = []

    def cancel_after_a_few() -> bool:
        calls.append(1)
        return len(calls) > 6

    out2 = tmp_path / "b.safetensors"
    with pytest.raises(Cancelled):
        adapt(tiny_model_path, cases, out2, AdaptOptions(coarse_steps=0, fine_steps=50, device="cpu"),
              cancelled=cancel_after_a_few)
    assert not out2.exists()


def test_time_budget_stops_training(tmp_path, tiny_model_path, monkeypatch):
    import training.adapt as A

    cases = cases_from_dataset(make_site(tmp_path / "site", 1))
    with pytest.raises(DGLandmarkError, match="leaves no time to train"):
        adapt(tiny_model_path, cases, tmp_path / "a.safetensors", AdaptOptions(max_minutes=0.001, device="cpu"))
    # steps look nearly free, so the plan is the step cap: the deadline is what stops the run
    monkeypatch.setattr(A, "_step_seconds", lambda *args, **kwargs: 1e-6)
    result = adapt(tiny_model_path, cases, tmp_path / "a.safetensors",
                   AdaptOptions(max_minutes=0.3, coarse_steps=0, fine_steps=1_000_000, device="cpu"))
    assert result.stopped_by == "time budget" and 0 < result.steps["fine"] < 1_000_000
    assert result.seconds < 0.3 * 60 + 15  # the final check after the deadline is budgeted for


def test_user_errors_are_one_line(tmp_path, tiny_model_path, capsys):
    data = make_site(tmp_path / "site", 2)
    base = ["adapt", "--model", str(tiny_model_path), "--data", str(data), *FAST]
    # never the base model, never a bundled one
    assert main([*base, "--out", str(tiny_model_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    from napari_dglandmark.model.inference import bundled_models

    bundled = next(iter(bundled_models().values()))
    before = file_sha256(bundled)
    assert main([*base, "--out", str(bundled)]) == 2
    assert file_sha256(bundled) == before
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "model.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    # nothing reviewed: every landmark still "predicted"
    lonely = tmp_path / "unreviewed"
    lonely.mkdir()
    lms = read_landmarks(data / "scan0.mrk.json")
    lms.status = ["predicted"] * len(lms)
    write_landmarks(lonely / "scan0.mrk.json", lms)
    (lonely / "scan0.nii.gz").write_bytes((data / "scan0.nii.gz").read_bytes())
    assert main(["adapt", "--model", str(tiny_model_path), "--data", str(lonely), "--out",
                 str(tmp_path / "x.safetensors"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "no reviewed landmarks" in err and len(_errors(err)) == 1
    # another protocol's landmarks
    other = tmp_path / "other"
    other.mkdir()
    write_landmarks(other / "scan0.fcsv", Landmarks(["nasion", "AC"], np.zeros((2, 3))))
    (other / "scan0.nii.gz").write_bytes((data / "scan0.nii.gz").read_bytes())
    assert main(["adapt", "--model", str(tiny_model_path), "--data", str(other), "--out",
                 str(tmp_path / "y.safetensors"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "protocol mismatch" in err and "nasion" in err and len(_errors(err)) == 1
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_check_cases_needs_something_to_learn(tiny_model_path):
    names = read_metadata(tiny_model_path)["landmark_names"]
    vol = read_volume(SAMPLE_VOLUME)
    with pytest.raises(DGLandmarkError, match="no landmarks with a position"):
        check_cases([AdaptCase("a", vol, Landmarks(names[:2], np.full((2, 3), np.nan)))], names)
    with pytest.raises(DGLandmarkError, match="no cases"):
        check_cases([], names)


def test_a_coarse_stage_that_hurts_is_reverted(tmp_path, tiny_model_path, monkeypatch):
    import training.adapt as A

    errors = iter([2.0, 9.0, 1.5, 1.5, 1.5, 1.5])  # before, after the coarse stage, then the fine checks
    monkeypatch.setattr(A, "_mre", lambda detector, case, truth: next(errors))
    out = tmp_path / "a.safetensors"
    result = adapt(tiny_model_path, cases_from_dataset(make_site(tmp_path / "site", 1)), out,
                   AdaptOptions(coarse_steps=2, fine_steps=3, device="cpu"))
    assert result.metadata["coarse_stage_kept"] is False and result.steps["coarse"] == 2
    before, _ = load_checkpoint(tiny_model_path)
    after, _ = load_checkpoint(out)
    for k, v in after.state_dict().items():
        if k.startswith("coarse."):
            np.testing.assert_array_equal(v.numpy(), before.state_dict()[k].numpy())


def test_prepare_adaptation_checks_everything_before_training(tmp_path, tiny_model_path):
    from safetensors.torch import save_file

    from training.adapt import prepare_adaptation

    cases = cases_from_dataset(make_site(tmp_path / "site", 3))
    plan = prepare_adaptation(tiny_model_path, list(reversed(cases)))
    assert [c.name for c in plan.cases] == ["scan0", "scan1", "scan2"] and plan.held.name == "scan2"
    assert [c.name for c in plan.train] == ["scan0", "scan1"] and plan.evaluated_on == "held-back case scan2"
    truth = plan.truth(cases[0])
    assert truth.names == plan.names and int(truth.defined.sum()) == count_reviewed(cases[0].landmarks) == 16
    two = prepare_adaptation(tiny_model_path, cases[:2])
    assert two.held is None and two.evaluated_on == "the 2 training case(s) (no case held back)"
    single = tmp_path / "single.safetensors"
    save_file({"w": __import__("torch").zeros(1)}, str(single),
              metadata={"dglandmark": json.dumps({"architecture": {"name": "resunet3d"}, "landmark_names": ["AC"]})})
    with pytest.raises(DGLandmarkError, match="single.safetensors.*two-stage"):
        prepare_adaptation(single, cases)
    unreviewed = [AdaptCase(c.name, c.volume, reviewed(c.landmarks)) for c in cases]
    for c in unreviewed:
        c.landmarks.status = ["predicted"] * len(c.landmarks)
    with pytest.raises(DGLandmarkError, match="no reviewed landmarks"):
        prepare_adaptation(tiny_model_path, unreviewed)


def test_plan_steps_fits_the_time_left():
    from training.adapt import plan_steps

    options = AdaptOptions(coarse_steps=20, fine_steps=1500)
    assert plan_steps(options, 100.0, 1.0, 0.5, 0.0) == (20, 160)  # coarse capped, the rest goes to fine
    assert plan_steps(options, 10.0, 1.0, 0.5, 0.5) == (2, 8)  # a fifth for coarse; fine pays for its checks
    assert plan_steps(options, 1e6, 1.0, 0.5, 0.0) == (20, 1500)
    assert plan_steps(options, -5.0, 1.0, 0.5, 0.0) == (0, 0)


def test_adaptation_errors_follow_the_evaluation_failure_policy(tiny_model_path):
    """A landmark the model did not place is a failure, left out of the MRE (not a NaN mean)."""
    from training.adapt import _mre

    truth = read_landmarks(SAMPLE_LANDMARKS)

    class HalfDetector:
        names = truth.names

        def detect(self, volume):
            out = truth.copy()
            out.positions = out.positions + [3.0, 4.0, 0.0]
            out.positions[0] = np.nan  # not placed
            return out

    case = AdaptCase("a", read_volume(SAMPLE_VOLUME), truth)
    assert _mre(HalfDetector(), case, truth) == pytest.approx(5.0)
