"""Model files: safetensors round trip, metadata, refusal of pickles and junk, atomic writes."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import napari_dglandmark.model.checkpoint as ckpt
from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.model.checkpoint import (
    file_sha256,
    import_pth_state_dict,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from napari_dglandmark.model.networks import ResUNet3D, ViTPose3D

META = {
    "protocol": "afids32",
    "landmark_names": ["AC", "PC", "ICS"],
    "spacing": [1.5, 1.5, 1.5],
    "grid": [24, 24, 24],
    "normalisation": {"kind": "percentile", "low": 5, "high": 95},
    "training": {"epochs": 1, "seed": 0},
    "metrics": {"val_mre_mm": 2.5},
}


def _net(norm: str = "batch") -> ResUNet3D:
    torch.manual_seed(1)
    return ResUNet3D(out_channels=3, base_width=4, depth=2, blocks_per_stage=1, norm=norm)


class _Evil:
    """Unpickling this would create a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    "factory",
    [
        _net,
        lambda: ViTPose3D(
            out_channels=3, img_size=16, patch_size=8, embed_dim=16, depth=1, heads=2, decoder_width=8
        ),
    ],
)
def test_round_trip_bit_for_bit(tmp_path: Path, factory) -> None:
    net = factory()
    net.train()
    x = torch.randn(1, 1, 17, 19, 15)
    net(x)  # moves batch-norm running statistics away from their defaults
    net.eval()
    with torch.no_grad():
        expected = net(x)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, net, META)
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    for key, value in META.items():
        assert meta[key] == value
    assert meta["architecture"] == {"name": net.name, "hparams": net.hparams}
    assert meta["format_version"] == 1 and "created" in meta and "sha256" not in meta
    assert read_metadata(path) == meta

    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["sha256"] == file_sha256(path)
    assert {k: v for k, v in sidecar.items() if k != "sha256"} == meta
    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["dglandmark"]) == meta


def test_metadata_falls_back_to_sidecar(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net = _net()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, net, META)
    # Rewrite the weights without the header metadata; the sidecar's sha256 must then be updated too.
    save_file(dict(net.state_dict()), str(path))
    side = tmp_path / "m.json"
    with pytest.raises(DGLandmarkError, match="sha256"):
        load_checkpoint(path)
    data = json.loads(side.read_text())
    data["sha256"] = file_sha256(path)
    side.write_text(json.dumps(data))
    loaded, meta = load_checkpoint(path)
    assert meta["landmark_names"] == META["landmark_names"]
    side.unlink()
    with pytest.raises(DGLandmarkError, match="no dglandmark metadata"):
        read_metadata(path)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_refused_and_never_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.safetensors"
    payload = {"state_dict": _net().state_dict(), "evil": _Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    assert not marker.exists()
    for call in (load_checkpoint, read_metadata):
        with pytest.raises(DGLandmarkError, match="pickle") as info:
            call(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DGLandmarkError):
        import_pth_state_dict(path, _net())
    assert not marker.exists()


def test_random_bytes_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x13\x37" + os.urandom(500))
    with pytest.raises(DGLandmarkError, match="not a safetensors") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))
    with pytest.raises(DGLandmarkError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_bad_metadata_architecture_and_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net = _net()
    state = dict(net.state_dict())
    path = tmp_path / "x.safetensors"

    save_file(state, str(path), metadata={"dglandmark": "{not json"})
    with pytest.raises(DGLandmarkError, match="not valid JSON"):
        load_checkpoint(path)

    arch = {"name": "resunet3d", "hparams": net.hparams}
    save_file(state, str(path), metadata={"dglandmark": json.dumps({"architecture": {"name": "unet9000"}})})
    with pytest.raises(DGLandmarkError, match="unknown architecture"):
        load_checkpoint(path)
    assert read_metadata(path)["architecture"]["name"] == "unet9000"  # cheap listing still works

    save_file(state, str(path), metadata={"dglandmark": json.dumps({"protocol": "x"})})
    with pytest.raises(DGLandmarkError, match="architecture"):
        load_checkpoint(path)

    wrong = dict(arch, hparams=dict(net.hparams, base_width=8))
    save_file(state, str(path), metadata={"dglandmark": json.dumps({"architecture": wrong})})
    with pytest.raises(DGLandmarkError, match="weights do not match"):
        load_checkpoint(path)

    partial = {k: v for i, (k, v) in enumerate(state.items()) if i}
    save_file(partial, str(path), metadata={"dglandmark": json.dumps({"architecture": arch})})
    with pytest.raises(DGLandmarkError, match="missing"):
        load_checkpoint(path)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt, "file_sha256", boom)  # fails after the weights were written to a temp file
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, _net(), META)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    save_checkpoint(path, _net(), META)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, _net("instance"), META)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old model untouched


def test_save_rejects_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(DGLandmarkError, match="safetensors"):
        save_checkpoint(tmp_path / "model.pth", _net(), META)
    with pytest.raises(DGLandmarkError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "model.safetensors", _net(), META)


def test_import_pth_state_dict_round_trip(tmp_path: Path) -> None:
    src = _net()
    src.train()
    src(torch.randn(1, 1, 12, 12, 12))
    pth = tmp_path / "weights.pth"
    # DataParallel-style prefix, wrapped like many training scripts do.
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, pth)
    dst = _net()
    torch.manual_seed(5)
    for p in dst.parameters():
        torch.nn.init.normal_(p)
    out = import_pth_state_dict(pth, dst)
    assert out is dst
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    save_checkpoint(tmp_path / "imported.safetensors", dst, META)
    loaded, _ = load_checkpoint(tmp_path / "imported.safetensors")
    x = torch.randn(1, 1, 12, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), src.eval()(x))

    torch.save(ResUNet3D(out_channels=3, base_width=8, depth=2, blocks_per_stage=1).state_dict(), pth)
    with pytest.raises(DGLandmarkError, match="wrong shape"):
        import_pth_state_dict(pth, _net())
    torch.save([1, 2, 3], pth)
    with pytest.raises(DGLandmarkError, match="state dict"):
        import_pth_state_dict(pth, _net())


def test_import_pth_junk(tmp_path: Path) -> None:
    pth = tmp_path / "junk.pth"
    pth.write_bytes(b"hello world" * 10)
    with pytest.raises(DGLandmarkError, match="not a plain PyTorch state dict"):
        import_pth_state_dict(pth, _net())
    with pytest.raises(DGLandmarkError, match="not found"):
        import_pth_state_dict(tmp_path / "absent.pth", _net())
