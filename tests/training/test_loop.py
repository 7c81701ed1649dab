"""The generic training loop: files of a run, learning-rate schedules, best checkpoint, pre-training tasks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from napari_dglandmark.model.networks import build_network
from napari_dglandmark.model.single_stage import SingleStageDetector
from training.config import build_config, preset
from training.data import (
    Cache,
    LabelSpec,
    find_landmark_cases,
    find_segmentation_cases,
    load_landmark_cases,
    load_segmentation_cases,
    volume_of,
)
from training.loop import (
    LandmarkTask,
    PretrainTask,
    init_from_checkpoint,
    learning_rate,
    seed_everything,
    train,
)

from .test_data import NAMES, make_landmark_dataset, make_segmentation_dataset

TINY = dict(grid_size=16, base_width=4, depth=2, blocks_per_stage=1, batch_size=2, log_every=1)


def tiny_config(**changes):
    return preset("paper").updated({**TINY, **changes})


def _net(cfg, channels=3):
    seed_everything(cfg.seed)
    return build_network("resunet3d", in_channels=1, out_channels=channels, **cfg.network_hparams())


@pytest.fixture(scope="module")
def landmark_cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    root = make_landmark_dataset(tmp / "d", 3)
    return load_landmark_cases(find_landmark_cases(root), NAMES, tiny_config().single_stage(), Cache(tmp / "c"))


def test_run_folder_metrics_and_best(tmp_path, landmark_cases):
    cfg = tiny_config(max_steps=4, val_every=2, checkpoint_every=2)
    result = train(_net(cfg), LandmarkTask(landmark_cases[:2], landmark_cases[2:], cfg), cfg, tmp_path,
                   torch.device("cpu"), {"landmark_names": NAMES, "single_stage": cfg.single_stage().to_dict()},
                   progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "model.json", "best.safetensors", "metrics.csv", "resume.json",
            "resume.safetensors"} <= names
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    vals = [float(r["val_mre_mm"]) for r in rows if r["val_mre_mm"]]
    assert len(vals) == 2 and result.best_mre_mm == pytest.approx(min(vals), abs=1e-3)
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta["training"]["selected_step"] == result.best_step
    assert meta["landmark_names"] == NAMES
    # The saved model is usable through the single-network detector.
    det = SingleStageDetector(tmp_path / "model.safetensors", device="cpu")
    lms = det.detect(volume_of(landmark_cases[0]))
    assert lms.names == NAMES and np.isfinite(lms.positions).all()


def test_learning_rate_schedules():
    cfg = preset("paper").updated(dict(lr=1.0, max_steps=100, warmup_steps=10, schedule="cosine"))
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9) == pytest.approx(1.0)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 55) == pytest.approx(0.5)
    step = cfg.updated(dict(schedule="step", warmup_steps=0))
    assert [learning_rate(step, s) for s in (0, 49, 50, 75)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert learning_rate(cfg.updated(dict(schedule="constant", warmup_steps=0)), 99) == 1.0


@pytest.mark.parametrize("target,loss", [("boundary", "mix"), ("mask", "mse"), ("edge", "logcosh")])
def test_pretrain_targets(tmp_path, target, loss):
    root = make_segmentation_dataset(tmp_path / "seg", 1)
    cfg = tiny_config(target=target, loss=loss, max_steps=2, steps_per_epoch=1, batch_size=1, max_dist=2.0)
    cases = load_segmentation_cases(find_segmentation_cases(root), LabelSpec.parse(">127"), cfg.single_stage(),
                                    Cache(tmp_path / "c"))
    task = PretrainTask(cases, cfg)
    x, t = task.batch(np.random.default_rng(0), torch.Generator().manual_seed(0), 2, 0)
    assert x.shape == t.shape == (2, 1, 16, 16, 16)
    assert float(t.max()) == pytest.approx(255.0) and float(t.min()) == 0.0
    if target == "boundary":  # a thin band: far fewer voxels than the mask
        assert 0 < (t > 0).float().mean() < 0.6
    if target == "edge":
        assert float(x.max()) == pytest.approx(1.0)
    res = train(_net(cfg, 3), task, cfg, tmp_path / "run", torch.device("cpu"), {"kind": "pretrained"},
                progress=False)
    assert np.isfinite(res.final_loss) and (tmp_path / "run" / "model.safetensors").is_file()


def test_init_from_checkpoint_keeps_matching_weights(tmp_path):
    cfg = tiny_config(max_steps=1)
    src = _net(cfg, 1)
    save_checkpoint(tmp_path / "pre.safetensors", src, {})
    dst = _net(cfg.updated(dict(seed=5)), 3)
    copied, total = init_from_checkpoint(dst, tmp_path / "pre.safetensors")
    assert 0 < copied < total  # everything but the head (1 vs 3 channels)
    assert torch.equal(dst.stem[0][0].weight, src.stem[0][0].weight)
    loaded, _ = load_checkpoint(tmp_path / "pre.safetensors")
    assert loaded.head.out_channels == 1


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nlr = 0.01\ngrid_size = [8, 8, 8]\nbatch_size = 2\n')
    cfg = build_config("paper", "finetune", toml, {"batch_size": 4, "seed": None})
    assert cfg.lr == 0.01 and cfg.grid_size == (8, 8, 8) and cfg.batch_size == 4 and cfg.seed == 0
    (tmp_path / "bad.json").write_text('{"nonsense": 1}')
    with pytest.raises(DGLandmarkError, match="unknown setting"):
        build_config("paper", "finetune", tmp_path / "bad.json", {})
    with pytest.raises(DGLandmarkError, match="optimizer"):
        build_config("paper", "finetune", None, {"optimizer": "sgd"})
