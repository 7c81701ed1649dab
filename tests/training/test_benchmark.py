"""The DG benchmark's configuration, aggregation, tables and figure (the training itself is too long for tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark.errors import DGLandmarkError
from training.benchmark import load_config, markdown_tables, plot_sdr_curves, recipe_for, summarise

CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "dg_afids.toml"


def test_every_method_gets_the_same_budget():
    config = load_config(CONFIG)
    recipes = {m: recipe_for(config, "cpu", m, 0) for m in config["benchmark"]["methods"]}
    assert set(recipes) == {"Baseline", "AugDG", "EdgeDG", "SegDG", "BaPDG", "BaPDG-MSE"}
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
