"""``dglandmark-train`` end to end: pretrain -> finetune --init -> evaluate; user errors exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from napari_dglandmark.model.checkpoint import read_metadata
from napari_dglandmark.model.networks import build_network
from training.cli import main

from .test_data import make_landmark_dataset, make_segmentation_dataset

TINY_TOML = """
[train]
grid_size = [16, 16, 16]
base_width = 4
depth = 2
blocks_per_stage = 1
batch_size = 2
checkpoint_every = 5
val_every = 5
log_every = 1
cache_dir = "{cache}"
"""


@pytest.fixture()
def tiny(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML.format(cache=(tmp_path / "cache").as_posix()))
    return cfg


def test_pretrain_finetune_evaluate(tmp_path, tiny, capsys):
    seg = make_segmentation_dataset(tmp_path / "seg", 1)
    lms = make_landmark_dataset(tmp_path / "lms", 3)
    common = ["--config", str(tiny), "--max-steps", "5", "--device", "cpu", "--preset", "paper"]
    assert main(["pretrain", "--data", str(seg), "--out", str(tmp_path / "pre"), "--labels", ">127",
                 "--target", "boundary", "--loss", "mix", "--max-dist", "2", *common]) == 0
    pre = tmp_path / "pre"
    assert {"model.safetensors", "model.json", "config.json", "train.log", "metrics.csv"} <= {p.name for p in pre.iterdir()}
    assert json.loads((pre / "config.json").read_text())["settings"]["target"] == "boundary"

    assert main(["finetune", "--data", str(lms), "--out", str(tmp_path / "ft"),
                 "--init", str(pre / "model.safetensors"), *common]) == 0
    ft = tmp_path / "ft"
    meta = read_metadata(ft / "model.safetensors")
    assert meta["landmark_names"] == ["AC", "PC", "LE"] and meta["single_stage"]["grid_size"] == [16, 16, 16]
    assert "initialised" in (ft / "train.log").read_text()
    assert main(["finetune", "--data", str(lms), "--out", str(ft), *common]) == 2  # a run is there already
    assert "--resume" in capsys.readouterr().err

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(ft / "model.safetensors"), "--data", str(lms), "--out", str(out),
                 "--device", "cpu", "--snapshots"]) == 0
    for name in ("metrics.json", "per_landmark.csv", "predictions.csv", "sdr_curve.png"):
        assert (out / name).is_file()
    assert len(list((out / "snapshots").glob("*.png"))) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mre_mm", "median_mm", "failures", "sdr_mm", "sdr_curve", "per_landmark", "n_cases"):
        assert key in metrics
    assert metrics["n_cases"] == 3 and set(metrics["sdr_mm"]) == {"1", "2", "3", "4", "5", "6"}
    assert len(metrics["sdr_curve"]["sdr"]) == 61


def test_user_errors_exit_2(tmp_path, tiny, capsys):
    assert main(["finetune", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--preset", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dglandmark-train: error:") and "nope" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = [")
    lms = make_landmark_dataset(tmp_path / "lms", 1)
    assert main(["finetune", "--data", str(lms), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "malformed config" in capsys.readouterr().err
    assert main(["benchmark", "--config", str(tmp_path / "none.toml")]) == 2
    assert "no such benchmark config" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "none.safetensors"), "--data", str(lms),
                 "--out", str(tmp_path / "e")]) == 2
    assert main(["finetune", "--data", str(lms), "--out", str(tmp_path / "r2"), "--resume", "--preset", "paper",
                 "--config", str(tiny)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_through_the_cli(tmp_path, tiny):
    lms = make_landmark_dataset(tmp_path / "lms", 2)
    args = ["finetune", "--data", str(lms), "--out", str(tmp_path / "r"), "--config", str(tiny), "--device", "cpu",
            "--preset", "paper"]
    assert main([*args, "--max-steps", "5"]) == 0
    assert main([*args, "--max-steps", "7", "--resume"]) == 0
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert rows[-1].startswith("7,") and "resumed at step 5" in (tmp_path / "r" / "train.log").read_text()


def test_import_pth(tmp_path, tiny):
    net = build_network("resunet3d", in_channels=1, out_channels=6, base_width=4, depth=2, blocks_per_stage=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "net.pth")
    out = tmp_path / "net.safetensors"
    assert main(["import-pth", str(tmp_path / "net.pth"), "--out", str(out), "--out-channels", "6",
                 "--config", str(tiny)]) == 0
    meta = read_metadata(out)
    assert meta["architecture"]["hparams"]["out_channels"] == 6 and len(meta["landmark_names"]) == 6
