"""The DG benchmark's configuration, aggregation, tables and figure (the training itself is too long for tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark.errors import DGLandmarkError
from training.benchmark import (
    SingleArm,
    load_config,
    markdown_tables,
    plot_sdr_curves,
    recipe_for,
    single_config_for,
    sources_of,
    summarise,
)

CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "dg_afids.toml"
PAPER = CONFIG.with_name("dg_paper.toml")
PAPER_METHODS = ("Baseline", "AugDG", "EdgeDG", "SegDG", "BaPDG")


def test_every_method_gets_the_same_budget():
    config = load_config(CONFIG)
    recipes = {m: recipe_for(config, "cpu", m, 0) for m in config["benchmark"]["methods"]}
    assert set(recipes) == {*PAPER_METHODS, "BaPDG [brain-all]"}
    recipes["BaPDG-MSE"] = recipe_for(config, "cpu", "BaPDG-MSE", 0)  # defined, not in the default list
    assert len({(r.coarse_steps, r.fine_steps) for r in recipes.values()}) == 1
    assert recipes["Baseline"].pretrain_coarse_steps == 0 and recipes["AugDG"].rotation_deg == 15.0
    assert recipes["BaPDG"].pretrain_target == "boundary" and recipes["BaPDG"].pretrain_loss == "mix"
    assert recipes["BaPDG-MSE"].pretrain_loss == "mse" and recipes["SegDG"].pretrain_target == "mask"
    assert recipes["EdgeDG"].pretrain_target == "edge"
    for r in recipes.values():  # the unseen domains stay unseen: no contrast augmentation in training
        assert r.intensity == "none" and r.p_head_invert == 0.0


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(DGLandmarkError, match="preset|nope"):
        recipe_for(load_config(CONFIG), "nope", "BaPDG", 0)


def test_summary_table_and_figure(tmp_path):
    errors = {"A": {"d1": [np.full((2, 4), 1.5), np.full((2, 4), 2.5)]},
              "B": {"d1": [np.array([[1.0, 5.0, np.inf, 3.0]] * 2), np.array([[1.0, 1.0, 1.0, 1.0]] * 2)]}}
    summary = summarise(errors, "cpu", [0, 1], 1.0)
    a = summary["domains"]["d1"]["A"]
    assert a["mre_mean"] == pytest.approx(2.0) and a["mre_std"] == pytest.approx(0.5)
    assert a["sdr2_mean"] == pytest.approx(50.0)  # seed 0: all within 2 mm, seed 1: none
    b = summary["domains"]["d1"]["B"]
    assert b["sdr4_mean"] == pytest.approx((50.0 + 100.0) / 2)  # the failure (inf) never counts as detected
    text = markdown_tables(summary)
    assert "| A | 2.00 +- 0.50 |" in text
    plot_sdr_curves(errors, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000


def test_paper_arm_is_the_published_recipe():
    """Single network, Adam, 255-scaled heatmaps with MSE, argmax, +-5 (AugDG +-15) degrees, one budget."""
    config = load_config(PAPER)
    assert config["benchmark"]["arm"] == "single" and config["benchmark"]["decodes"][0] == "argmax"
    assert set(PAPER_METHODS) <= set(config["benchmark"]["methods"])
    runs = {m: single_config_for(config, "cpu", m, 0) for m in config["benchmark"]["methods"]}
    assert len({(pre.max_steps, fine.max_steps, fine.grid_size) for pre, fine in runs.values()}) == 1
    for pre, fine in runs.values():
        assert fine.optimizer == "adam" and fine.schedule == "constant" and fine.peak == 255.0
        assert fine.decode == "argmax" and pre.peak == 255.0
    assert runs["AugDG"][1].rotation_deg == 15.0 and runs["Baseline"][1].rotation_deg == 5.0
    assert (runs["BaPDG"][0].target, runs["BaPDG"][0].loss) == ("boundary", "mix")
    assert (runs["SegDG"][0].target, runs["EdgeDG"][0].target) == ("mask", "edge")
    assert sources_of(config, "Baseline") == [] and sources_of(config, "BaPDG") == ["wm2009a"]
    assert sources_of(config, "BaPDG [chest-ct]") == ["chest-ct"]


def test_unseen_mean_and_stroke_agreement_in_the_summary():
    errors = {"A": {"source (deformed T1w)": [np.full((1, 2), 9.0)] * 2,
                    "u1": [np.full((1, 2), 1.0), np.full((1, 2), 3.0)],
                    "u2": [np.full((1, 2), 3.0), np.full((1, 2), 5.0)]}}
    summary = summarise(errors, "cpu", [0, 1], 1.0, stroke={"A": [1.0, 2.0]}, arm="single")
    unseen = summary["unseen_mean"]["A"]  # per seed: (1+3)/2 = 2 and (3+5)/2 = 4; the source is left out
    assert unseen["mre_mean"] == pytest.approx(3.0) and unseen["mre_std"] == pytest.approx(1.0)
    assert summary["stroke_t1_vs_t2"]["A"]["median_mm_mean"] == pytest.approx(1.5)
    assert summary["per_seed_mre"]["A"]["u2"] == pytest.approx([3.0, 5.0])
    assert "| A | 3.00 +- 1.00 | 1.50 +- 0.50 |" in markdown_tables(summary)


def test_single_arm_pretrains_finetunes_and_decodes_both_ways(shared_data, tmp_path):
    """The paper arm end to end at a toy size: pre-training on the chest CT, fine-tuning on the template."""
    config = load_config(PAPER)
    config["preset"]["toy"] = dict(config["preset"]["cpu"], grid_size=[16, 16, 16], base_width=4, depth=2,
                                   pretrain_steps=2, finetune_steps=2, val_every=1, sigma_vox=1.0, max_dist=1.0)
    arm = SingleArm(config, "toy", shared_data, tmp_path, _afids_names(), print)
    detectors = arm.train("BaPDG [chest-ct]", 0)
    assert list(detectors) == ["BaPDG [chest-ct]", "BaPDG [chest-ct], centroid decoding"]
    run = tmp_path / "BaPDG [chest-ct]-seed0"
    assert (run / "pretrain" / "model.safetensors").is_file() and (run / "finetune" / "model.safetensors").is_file()
    argmax, centroid = detectors.values()
    assert (argmax.config.decode, centroid.config.decode) == ("argmax", "centroid")
    assert argmax.info.metadata["pretrain_sources"] == ["chest-ct"]
    found = centroid.detect(arm.validation[0][0])
    assert len(found.names) == 32 and np.isfinite(found.positions).all()


def test_pretraining_sources(shared_data):
    from training.dg_data import pretraining_pairs

    (ct, bones), = pretraining_pairs(shared_data, ["chest-ct"])
    assert bones.shape == ct.array.shape and 0 < bones.mean() < 0.5
    with pytest.raises(DGLandmarkError, match="unknown pre-training source"):
        pretraining_pairs(shared_data, ["nope"])


def _afids_names() -> list[str]:
    from napari_dglandmark.protocols import load_protocol

    return list(load_protocol("afids32").names)


def test_training_anatomies_are_other_brains_from_the_training_split(shared_data):
    from training.dg_data import source_truth, training_anatomies
    from training.shapes import read_subjects, split_subjects, to_template_frame

    t1w, truth = source_truth(shared_data)
    (volume, moved), = training_anatomies(shared_data, 1, t1w, truth)
    train, held = split_subjects(read_subjects(shared_data / "afids-shapes", _afids_names()))
    np.testing.assert_allclose(moved.positions, to_template_frame(train[0], truth.positions))
    assert np.nanmean(np.linalg.norm(moved.positions - truth.positions, axis=1)) > 1.0  # another brain
    assert volume.geometry.shape == t1w.geometry.shape and not np.array_equal(volume.array, t1w.array)
    assert train[0].name not in {s.name for s in held}
