"""A small real BIDS dataset made from the shared scans: sessions, acq/run entities, a T1w/T2w pair,
a ``.bidsignore``, a corrupt image and files a reader must leave alone."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, require_shared

IXI = SHARED_DATA / "real-heads-ixi"
STROKE = SHARED_DATA / "real-unlabelled"

#: relative path in the dataset -> source scan (None: a corrupt file)
LAYOUT = {
    "sub-01/anat/sub-01_T1w.nii.gz": IXI / "IXI132-HH-1415_T1.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz": IXI / "IXI162-HH-1548_T1.nii.gz",
    "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_run-2_T1w.nii.gz": IXI / "IXI174-HH-1571_T1.nii.gz",
    "sub-03/anat/sub-03_T1w.nii.gz": STROKE / "stroke_T1.nii.gz",
    "sub-03/anat/sub-03_T2w.nii.gz": STROKE / "stroke_T2.nii.gz",
    "sub-04/anat/sub-04_T1w.nii.gz": None,
    # ignored by .bidsignore (a localizer and a whole participant):
    "sub-01/anat/sub-01_acq-localizer_T1w.nii.gz": IXI / "IXI206-HH-1650_T1.nii.gz",
    "sub-99/anat/sub-99_T1w.nii.gz": IXI / "IXI211-HH-1568_T1.nii.gz",
}
BIDSIGNORE = "# test patterns\n*_acq-localizer_*\nsub-99/\n"
#: what a reader must find, by suffix
T1W = ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
       "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_run-2_T1w.nii.gz", "sub-03/anat/sub-03_T1w.nii.gz",
       "sub-04/anat/sub-04_T1w.nii.gz"]
T2W = ["sub-03/anat/sub-03_T2w.nii.gz"]
CORRUPT = "sub-04/anat/sub-04_T1w.nii.gz"


def make_dataset(root: Path, layout: dict[str, Path | None] = LAYOUT) -> Path:
    """Write the dataset (copies of the scans: a BIDS dataset owns its files)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\nsub-04\n")
    (root / ".bidsignore").write_text(BIDSIGNORE)
    for rel, source in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is None:  # gzip header, then garbage: a truncated/corrupt NIfTI
            path.write_bytes(gzip.compress(b"not a nifti file" * 10)[:40])
        else:
            shutil.copyfile(require_shared(source), path)
    # files a reader must leave alone: a sidecar, a badly named image, derivatives and sourcedata
    (root / "sub-01/anat/sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    shutil.copyfile(IXI / "IXI212-HH-1643_T1.nii.gz", root / "sub-01/anat/scan_T1w.nii.gz")
    for other in ("derivatives/old/sub-01/anat", "sourcedata/sub-01/anat"):
        (root / other).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(IXI / "IXI213-HH-1642_T1.nii.gz", root / other / "sub-01_T1w.nii.gz")
    return root


@pytest.fixture
def bids_dataset(tmp_path, shared_data) -> Path:
    return make_dataset(tmp_path / "ds")


def schema_accepts_derivative(relpath: str) -> bool:
    """Whether BIDS's schema (``bidsschematools``) accepts a derivative file's path and entities.

    No BIDS rule knows a landmark suffix, so the name is checked as the JSON sidecar of an anatomical
    derivative of the source's suffix (``..._space-T1w_desc-dglandmark_afids.tsv`` as
    ``..._space-T1w_desc-dglandmark_T1w.json``): folder, entities, their order and labels are checked.
    """
    import re

    from bidsschematools.rules import regexify_filename_rules
    from bidsschematools.schema import load_schema

    from napari_dglandmark.bids.dataset import parse_name

    schema = load_schema()
    rules = regexify_filename_rules(schema.rules.files.deriv.imaging, schema, level=1)
    folder, name = relpath.rsplit("/", 1)
    parsed = parse_name(name)
    if parsed is None or parsed[1] != "afids" or "space" not in dict(parsed[0]):
        return False
    stem = "_".join(f"{k}-{v}" for k, v in parsed[0])
    as_sidecar = f"{folder}/{stem}_{dict(parsed[0])['space']}.json"
    return any(re.match(rule["regex"], as_sidecar) for rule in rules)


def derivative_naming_problems(out: Path) -> list[str]:
    """Files of a derivative folder that break BIDS naming where it applies (not .bidsignore'd ones)."""
    from bids_validator import BIDSValidator

    from napari_dglandmark.bids.bidsignore import BidsIgnore

    ignore = BidsIgnore.from_dataset(out)
    problems = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel == ".bidsignore" or ignore.ignores(rel):
            continue
        ok = BIDSValidator().is_bids(f"/{rel}") if "/" not in rel else schema_accepts_derivative(rel)
        if not ok:
            problems.append(rel)
    return problems
