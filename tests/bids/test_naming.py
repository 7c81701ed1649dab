"""Derivative names: source entities kept, BIDS entity order, the validator's naming rules where they apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_dglandmark.bids.dataset import BidsImage, parse_name
from napari_dglandmark.bids.derivative import Provenance, dataset_description
from napari_dglandmark.bids.naming import ENTITY_ORDER, LANDMARK_EXTENSIONS, derivative_files

from .conftest import schema_accepts_derivative

bids_validator = pytest.importorskip("bids_validator")
schema = pytest.importorskip("bidsschematools.schema")


def _image(rel: str) -> BidsImage:
    entities, suffix, ext = parse_name(Path(rel).name)
    return BidsImage(Path("/ds") / rel, rel, entities, suffix, ext)


SOURCES = ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_acq-fast_run-2_T1w.nii.gz",
           "sub-03/anat/sub-03_T2w.nii.gz", "sub-04/ses-pre/anat/sub-04_ses-pre_ce-gad_rec-norm_run-1_echo-2_FLAIR.nii",
           "sub-05/anat/sub-05_acq-mp2rage_run-1_part-mag_chunk-1_T1w.nii.gz"]


def test_entity_order_is_the_schemas():
    s = schema.load_schema()
    assert list(ENTITY_ORDER) == [s.objects.entities[e]["name"] for e in s.rules.entities]


@pytest.mark.parametrize("rel", SOURCES)
def test_derivative_names_keep_the_source_entities_in_bids_order(rel):
    image = _image(rel)
    assert bids_validator.BIDSValidator().is_bids("/" + rel), rel  # the source itself is valid BIDS
    files = derivative_files("/out", image, "afids32")
    for ext in ("fcsv", "mrk.json", "tsv", "json", "png"):
        path = files.path(ext).relative_to("/out").as_posix()
        folder, name = path.rsplit("/", 1)
        assert folder == str(Path(rel).parent if ext != "png" else Path(rel).parent.parent / "figures")
        entities, suffix, extension = parse_name(name)
        assert suffix == "afids" and extension == "." + ext
        keys = [k for k, _ in entities]
        assert keys == sorted(keys, key=ENTITY_ORDER.index)  # BIDS order, every key a BIDS entity
        assert dict(entities)["space"] == image.suffix and dict(entities)["desc"] == "dglandmark"
        source = [(k, v) for k, v in entities if k not in ("space", "desc")]
        assert source == list(image.entities)  # nothing dropped, nothing added
        # the validator knows no landmark suffix; the name with the source suffix back is valid BIDS
        raw = "_".join(f"{k}-{v}" for k, v in source) + f"_{image.suffix}{image.extension}"
        assert bids_validator.BIDSValidator().is_bids(f"/{Path(rel).parent.as_posix()}/{raw}")


@pytest.mark.parametrize("rel", SOURCES)
def test_bids_schema_accepts_the_derivative_names(rel):
    files = derivative_files("/out", _image(rel), "afids32")
    for ext in LANDMARK_EXTENSIONS:
        assert schema_accepts_derivative(files.relpath(ext)), files.relpath(ext)
    misordered = files.relpath("tsv").replace("_space-", "_desc-dglandmark_space-").replace("_desc-dglandmark_afids",
                                                                                              "_afids")
    assert not schema_accepts_derivative(misordered)  # the check can fail


def test_a_t1w_and_a_t2w_of_one_session_get_different_names():
    a = derivative_files("/o", _image("sub-03/anat/sub-03_T1w.nii.gz"), "afids32")
    b = derivative_files("/o", _image("sub-03/anat/sub-03_T2w.nii.gz"), "afids32")
    assert a.sidecar != b.sidecar
    assert derivative_files("/o", _image(SOURCES[0]), "fetal-biometry").stem.endswith("_fetalbiometry")


def test_dataset_description_is_a_valid_derivative_description(tmp_path):
    doc = dataset_description(Provenance("afids32", "ab" * 32, "afids32"), tmp_path)
    assert bids_validator.BIDSValidator().is_bids("/dataset_description.json")
    s = schema.load_schema()
    rules = s.rules.json.dataset
    required = {k for name in ("dataset_description", "derivative_description")
                for k, level in rules[name]["fields"].items() if level == "required"}
    assert required == {"Name", "BIDSVersion", "GeneratedBy"} and required <= set(doc)
    assert "raw" in doc["DatasetLinks"]  # required once the sidecars use bids:raw: URIs
    assert doc["DatasetType"] == "derivative"
    assert doc["GeneratedBy"][0]["Name"] == "napari-dglandmark" and "ab" * 32 in doc["GeneratedBy"][0]["Description"]
