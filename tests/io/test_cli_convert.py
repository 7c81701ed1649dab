"""``dglandmark convert``: the done-when chain fcsv -> mrk.json -> csv -> fcsv keeps all 32 AFIDs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark.cli import main
from napari_dglandmark.io import read_landmarks
from tests.conftest import GT_FCSV, RATER2_MRK


def _check_chain_end(final: Path) -> None:
    gt = read_landmarks(GT_FCSV)
    back = read_landmarks(final)
    assert len(back) == 32
    assert back.names == gt.names
    np.testing.assert_allclose(back.positions_in("RAS"), gt.positions_in("RAS"), atol=1e-6, rtol=0)


def test_convert_chain_in_process(tmp_path: Path, shared_data: Path, capsys) -> None:
    steps = [(GT_FCSV, tmp_path / "a.mrk.json"), (tmp_path / "a.mrk.json", tmp_path / "b.csv"),
             (tmp_path / "b.csv", tmp_path / "c.fcsv")]
    for src, dst in steps:
        assert main(["convert", str(src), str(dst)]) == 0
        assert dst.exists()
    assert "wrote 32 landmarks" in capsys.readouterr().out
    doc = json.loads((tmp_path / "a.mrk.json").read_text())
    assert doc["markups"][0]["coordinateSystem"] == "RAS"
    _check_chain_end(tmp_path / "c.fcsv")


def test_convert_chain_lps_and_protocol(tmp_path: Path, shared_data: Path) -> None:
    a, b, c = tmp_path / "a.mrk.json", tmp_path / "b.csv", tmp_path / "c.fcsv"
    assert main(["convert", str(GT_FCSV), str(a), "--coords", "lps", "--protocol", "afids32"]) == 0
    assert json.loads(a.read_text())["markups"][0]["coordinateSystem"] == "LPS"
    assert main(["convert", str(a), str(b), "--coords", "LPS"]) == 0
    assert "LPS" in b.read_text().splitlines()[1]
    assert main(["convert", str(b), str(c)]) == 0
    _check_chain_end(c)


def test_convert_rater2_with_protocol_renames_case(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "r2.csv"
    assert main(["convert", str(RATER2_MRK), str(out), "--protocol", "afids32"]) == 0
    from napari_dglandmark.protocols import load_protocol
    assert read_landmarks(out).names == list(load_protocol("afids32").names)


def test_convert_fetal_protocol_writes_lines(tmp_path: Path) -> None:
    from napari_dglandmark.io import Landmarks, write_landmarks
    from napari_dglandmark.protocols import load_protocol

    protocol = load_protocol("fetal-biometry")
    lm = Landmarks.from_ras(list(protocol.names), np.arange(36, dtype=float).reshape(12, 3) ** 1.5)
    src = tmp_path / "in.csv"
    write_landmarks(src, lm)
    out = tmp_path / "out.mrk.json"
    assert main(["convert", str(src), str(out), "--protocol", "fetal-biometry"]) == 0
    back = read_landmarks(out)
    assert back.measurements == pytest.approx(protocol.measure(lm), abs=1e-9)


def _dglandmark_command() -> list[str]:
    exe = shutil.which("dglandmark")
    return [exe] if exe else [sys.executable, "-m", "napari_dglandmark.cli"]


def test_convert_chain_subprocess(tmp_path: Path, shared_data: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    steps = [(GT_FCSV, tmp_path / "a.mrk.json"), (tmp_path / "a.mrk.json", tmp_path / "b.csv"),
             (tmp_path / "b.csv", tmp_path / "c.fcsv")]
    for src, dst in steps:
        done = subprocess.run([*_dglandmark_command(), "convert", str(src), str(dst)], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
    _check_chain_end(tmp_path / "c.fcsv")


def test_subprocess_user_error_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = tmp_path / "out.csv"
    done = subprocess.run([*_dglandmark_command(), "convert", str(tmp_path / "nope.fcsv"), str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "nope.fcsv" in done.stderr
    assert not out.exists()
