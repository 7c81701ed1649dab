"""The CI switch: without ../shared/data a run must fail, not turn green by skipping."""

from __future__ import annotations

import pytest

from tests import conftest


def test_missing_shared_data_skips_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(conftest.REQUIRE_SHARED_DATA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        conftest.require_shared(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_missing_shared_data_fails_under_the_ci_switch(tmp_path, monkeypatch, value):
    monkeypatch.setenv(conftest.REQUIRE_SHARED_DATA_ENV, value)
    with pytest.raises(pytest.fail.Exception, match="DGLANDMARK_REQUIRE_SHARED_DATA is set"):
        conftest.require_shared(tmp_path / "absent.nii.gz")


def test_present_shared_data_passes_under_the_switch(tmp_path, monkeypatch):
    monkeypatch.setenv(conftest.REQUIRE_SHARED_DATA_ENV, "1")
    assert conftest.require_shared(tmp_path) == tmp_path


def test_subprocess_run_without_shared_data_is_red(tmp_path):
    """End to end: a test using the fixture, with the data pointed elsewhere, fails under the switch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(conftest.__file__).resolve().parents[1]
    env = {**os.environ, "DGLANDMARK_SHARED_DATA": str(tmp_path / "nowhere"),
           conftest.REQUIRE_SHARED_DATA_ENV: "1"}
    target = "tests/io/test_protocols.py::test_afids32_names_match_groundtruth_desc_column"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target], cwd=root,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "1 error" in proc.stdout and "is a failure" in proc.stdout, proc.stdout[-2000:]
    env.pop(conftest.REQUIRE_SHARED_DATA_ENV)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target], cwd=root,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-2000:]
