"""The BIDS reader: sessions, entities, labels, suffixes, .bidsignore, bad names."""

from __future__ import annotations

import json

import pytest

from napari_dglandmark.bids.bidsignore import BidsIgnore
from napari_dglandmark.bids.dataset import find_images, parse_name, subjects_of
from napari_dglandmark.errors import DGLandmarkError

from .conftest import T1W, T2W


def _rel(selection):
    return [i.relpath for i in selection.images]


def test_finds_every_t1w_across_sessions_and_leaves_out_ignored_and_misnamed(bids_dataset):
    found = find_images(bids_dataset)
    assert _rel(found) == T1W  # no localizer, no sub-99, nothing under derivatives/ or sourcedata/
    assert len(found.skipped) == 1 and found.skipped[0].startswith("sub-01/anat/scan_T1w.nii.gz: not a BIDS")
    image = found.images[2]
    assert image.entities == (("sub", "02"), ("ses", "2"), ("acq", "fast"), ("run", "2"))
    assert (image.subject, image.session, image.suffix, image.stem) == ("02", "2", "T1w",
                                                                         "sub-02_ses-2_acq-fast_run-2_T1w")


def test_suffixes_labels_and_sessions_select(bids_dataset):
    assert _rel(find_images(bids_dataset, suffixes=["T2w"])) == T2W
    assert _rel(find_images(bids_dataset, suffixes=["T1w", "T2w"])) == sorted(T1W + T2W)
    assert _rel(find_images(bids_dataset, participants=["sub-03", "01"])) == [T1W[0], T1W[3]]
    assert _rel(find_images(bids_dataset, participants=["02"], sessions=["ses-2"])) == [T1W[2]]
    assert subjects_of(bids_dataset) == ["01", "02", "03", "04"]


def test_unknown_labels_and_empty_selections_are_one_line_errors(bids_dataset, tmp_path):
    with pytest.raises(DGLandmarkError, match=r"no participant sub-07 in the dataset \(has: 01, 02, 03, 04\)"):
        find_images(bids_dataset, participants=["07"])
    with pytest.raises(DGLandmarkError, match="no participant sub-99"):  # .bidsignore'd: not in the dataset
        find_images(bids_dataset, participants=["99"])
    with pytest.raises(DGLandmarkError, match="no session ses-9"):
        find_images(bids_dataset, sessions=["9"])
    with pytest.raises(DGLandmarkError, match="no anatomical image with suffix FLAIR"):
        find_images(bids_dataset, suffixes=["FLAIR"])
    with pytest.raises(DGLandmarkError, match="not alphanumeric"):
        find_images(bids_dataset, participants=["0_1"])
    with pytest.raises(DGLandmarkError, match="no dataset_description.json"):
        find_images(tmp_path)
    (tmp_path / "dataset_description.json").write_text("{oops")
    with pytest.raises(DGLandmarkError, match="dataset_description.json: unreadable"):
        find_images(tmp_path)


def test_an_image_in_the_wrong_folder_is_left_out_with_a_line(bids_dataset):
    wrong = bids_dataset / "sub-01/anat/sub-02_T1w.nii.gz"
    wrong.write_bytes((bids_dataset / T1W[0]).read_bytes())
    found = find_images(bids_dataset, participants=["01"])
    assert _rel(found) == [T1W[0]]
    assert any("sub-01/anat/sub-02_T1w.nii.gz: its sub/ses entities do not match" in s for s in found.skipped)


def test_parse_name():
    assert parse_name("sub-01_ses-a_run-1_T2w.nii.gz") == ((("sub", "01"), ("ses", "a"), ("run", "1")), "T2w",
                                                          ".nii.gz")
    assert parse_name("sub-01_T1w.nii") == ((("sub", "01"),), "T1w", ".nii")
    for bad in ("sub-01.nii.gz", "ses-1_sub-01_T1w.nii.gz", "sub-01_run_T1w.nii.gz", "sub-01_sub-02_T1w.nii.gz",
                "sub-0_1_T1w.nii.gz"):
        assert parse_name(bad) is None, bad


@pytest.mark.parametrize(("lines", "path", "is_dir", "ignored"), [
    (["*_acq-localizer_*"], "sub-01/anat/sub-01_acq-localizer_T1w.nii.gz", False, True),
    (["sub-99/"], "sub-99/anat/sub-99_T1w.nii.gz", False, True),
    (["sub-99/"], "sub-990/anat/sub-990_T1w.nii.gz", False, False),
    (["anat/"], "sub-01/anat/x.nii.gz", False, True),  # no slash inside: any depth
    (["/anat/"], "sub-01/anat/x.nii.gz", False, False),  # anchored at the root
    (["sub-01/anat/*.nii"], "sub-01/anat/a.nii", False, True),
    (["sub-01/anat/*.nii"], "sub-02/sub-01/anat/a.nii", False, False),
    (["**/extra"], "sub-01/ses-1/extra", True, True),
    (["sub-*/**/*_T2w.nii.gz", "!sub-03/**"], "sub-03/anat/sub-03_T2w.nii.gz", False, False),
    (["sub-*/**/*_T2w.nii.gz", "!sub-03/**"], "sub-04/anat/sub-04_T2w.nii.gz", False, True),
    (["sub-0[12]/"], "sub-02/anat/a.nii", False, True),
    (["sub-0[!12]/"], "sub-02/anat/a.nii", False, False),
    (["# comment", "", "*.nii"], "sub-01/anat/a.nii.gz", False, False),
    (["tmp/"], "sub-01/anat/tmp", False, False),  # a trailing slash matches folders only
])
def test_bidsignore_patterns(lines, path, is_dir, ignored):
    assert BidsIgnore(lines).ignores(path, is_dir) is ignored


def test_derivatives_folder_of_the_dataset_is_never_read(bids_dataset):
    # a result folder inside the dataset (the usual BIDS_DIR/derivatives/dglandmark) stays invisible
    (bids_dataset / "derivatives" / "dglandmark").mkdir(parents=True)
    (bids_dataset / "derivatives" / "dglandmark" / "dataset_description.json").write_text(json.dumps({}))
    assert _rel(find_images(bids_dataset)) == T1W
