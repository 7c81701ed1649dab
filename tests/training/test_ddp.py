"""Two DDP processes (gloo, CPU) reach the parameters of one process on the same global batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from napari_dglandmark.errors import DGLandmarkError
from training import ddp
from training.data import Cache, find_landmark_cases, load_landmark_cases
from training.loop import LandmarkTask, train

from .test_data import NAMES, make_landmark_dataset
from .test_loop import _net, tiny_config

CFG = dict(max_steps=3, batch_size=4, val_every=2, checkpoint_every=3, optimizer="adamw", grad_clip=1.0)


def _run(data: Path, run_dir: Path, info: ddp.DistInfo) -> torch.nn.Module:
    cfg = tiny_config(**CFG)
    cases = load_landmark_cases(find_landmark_cases(data), NAMES, cfg.single_stage(), Cache(data.parent / "cache"))
    return train(_net(cfg), LandmarkTask(cases[:2], cases[2:], cfg), cfg, run_dir, torch.device("cpu"),
                 {"landmark_names": NAMES}, info=info, progress=False).network


def _worker(rank: int, world: int, data: str, out: str, init: str, paths: list[str]) -> None:
    sys.path[:0] = [p for p in paths if p not in sys.path]
    torch.set_num_threads(1)
    info, device = ddp.setup(torch.device("cpu"), ddp.DistInfo(rank, world, rank), init_method=init)
    try:
        net = _run(Path(data), Path(out), info)
        if rank == 0:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(out) / "params.safetensors"))
    finally:
        ddp.teardown(info)


def test_two_gloo_processes_match_one(tmp_path):
    data = make_landmark_dataset(tmp_path / "d", 3)
    load_landmark_cases(find_landmark_cases(data), NAMES, tiny_config().single_stage(), Cache(tmp_path / "cache"))
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_worker, args=(2, str(data), str(out), f"file://{tmp_path / 'init'}", list(sys.path)), nprocs=2,
             join=True)
    two = load_file(str(out / "params.safetensors"))
    one = _run(data, tmp_path / "single", ddp.DistInfo()).state_dict()
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert (out / "model.safetensors").is_file() and (out / "metrics.csv").is_file()


def test_batch_must_split_evenly():
    assert ddp.local_slice(4, ddp.DistInfo(1, 2, 1)) == slice(2, 4)
    with pytest.raises(DGLandmarkError, match="split"):
        ddp.local_slice(3, ddp.DistInfo(0, 2, 0))
