"""Atomic writes give files the permissions a plain write would (not mkstemp's private 0600)."""

from __future__ import annotations

import os
import stat

from napari_dglandmark.io.atomic import atomic_path, write_text_atomic


def test_atomic_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.csv", "x\n")
        with atomic_path(tmp_path / "b.nii.gz") as tmp:
            tmp.write_bytes(b"data")
    finally:
        os.umask(old)
    for name in ("a.csv", "b.nii.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.nii.gz"]


def test_checkpoints_are_readable_by_others(tmp_path):
    from napari_dglandmark.model.checkpoint import save_checkpoint
    from napari_dglandmark.model.networks import ResUNet3D

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "m.safetensors", ResUNet3D(base_width=2, depth=1, out_channels=1), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o644
