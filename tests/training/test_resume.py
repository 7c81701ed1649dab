"""A run stopped after k steps and resumed to n equals an uninterrupted n-step run (same seed)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from napari_dglandmark.errors import DGLandmarkError
from training.data import Cache, find_landmark_cases, load_landmark_cases
from training.loop import LandmarkTask, train

from .test_data import NAMES, make_landmark_dataset
from .test_loop import _net, tiny_config


@pytest.mark.parametrize("optimizer,schedule,clip", [("adam", "constant", 0.0), ("adamw", "cosine", 1.0)])
def test_resume_matches_uninterrupted(tmp_path, optimizer, schedule, clip):
    root = make_landmark_dataset(tmp_path / "d", 3)
    cfg = tiny_config(max_steps=6, val_every=2, checkpoint_every=2, optimizer=optimizer, schedule=schedule,
                      warmup_steps=2, grad_clip=clip, weight_decay=1e-3)
    cases = load_landmark_cases(find_landmark_cases(root), NAMES, cfg.single_stage(), Cache(tmp_path / "c"))

    def run(folder, stop=None, resume=False):
        return train(_net(cfg), LandmarkTask(cases[:2], cases[2:], cfg), cfg, folder, torch.device("cpu"),
                     {"landmark_names": NAMES}, resume=resume, stop_after=stop, progress=False)

    full = run(tmp_path / "full")
    part = run(tmp_path / "part", stop=3)  # "killed" after step 3: the last saved state is step 3
    assert part.checkpoint is None and not (tmp_path / "part" / "model.safetensors").exists()
    state = json.loads((tmp_path / "part" / "resume.json").read_text())
    assert state["step"] == 3 and isinstance(state["rng"]["torch"], list)
    with safe_open(str(tmp_path / "part" / "resume.safetensors"), "pt") as handle:
        assert any(k.startswith("optim.") for k in handle.keys())
    resumed = run(tmp_path / "part", resume=True)
    a, b = full.network.state_dict(), resumed.network.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7, msg=key)
    assert resumed.best_step == full.best_step and resumed.best_mre_mm == pytest.approx(full.best_mre_mm)
    rows = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    full_rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:5] for r in rows] == [r.split(",")[:5] for r in full_rows]  # all but the seconds
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_resume_without_state_is_a_user_error(tmp_path):
    cfg = tiny_config(max_steps=1)
    with pytest.raises(DGLandmarkError, match="nothing to resume"):
        train(_net(cfg), LandmarkTask([object()], [], cfg), cfg, tmp_path, torch.device("cpu"), resume=True,
              progress=False)


def test_should_stop_ends_the_run_where_it_says_and_it_resumes(tmp_path):
    """A stop hook (time budget, cancel) ends the run before the step it vetoes, like a kill, resumable."""
    root = make_landmark_dataset(tmp_path / "d", 2)
    cfg = tiny_config(max_steps=5, val_every=5, checkpoint_every=100)
    cases = load_landmark_cases(find_landmark_cases(root), NAMES, cfg.single_stage(), Cache(tmp_path / "c"))
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # allow two steps, veto the third

    task = LandmarkTask(cases[:1], cases[1:], cfg)
    part = train(_net(cfg), task, cfg, tmp_path / "run", torch.device("cpu"), progress=False, should_stop=should_stop)
    assert part.steps == 2 and part.checkpoint is None
    assert json.loads((tmp_path / "run" / "resume.json").read_text())["step"] == 2
    rest = train(_net(cfg), task, cfg, tmp_path / "run", torch.device("cpu"), resume=True, progress=False)
    assert rest.steps == 5 and rest.checkpoint is not None
