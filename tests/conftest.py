"""Shared fixtures: the read-only real data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("DGLANDMARK_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
AFIDS = SHARED_DATA / "afids-mni2009c"
T1W = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
GT_FCSV = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
RATER2_FCSV = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv"
RATER2_MRK = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_T1w_afids.mrk.json"
MNI2009A = SHARED_DATA / "mni-icbm152-2009a"
SCHEMA = SHARED_DATA / "slicer-markups-schema" / "markups-schema-v1.0.3.json"
CT_DIR = SHARED_DATA / "slicerio-ct"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; skips the test (with the reason) when it is absent."""
    if not T1W.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set DGLANDMARK_SHARED_DATA)")
    return SHARED_DATA
