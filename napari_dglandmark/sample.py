"""Where the bundled sample lives: the 2 mm AFIDs T1w template and its 32 expert landmarks (Qt-free)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_VOLUME = SAMPLE_DIR / "afids_t1w_2mm.nii.gz"
SAMPLE_LANDMARKS = SAMPLE_DIR / "afids_t1w_2mm_groundtruth.mrk.json"
