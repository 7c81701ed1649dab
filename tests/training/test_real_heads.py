"""Real-people heads: label maps to tissue classes, the truth transfer, their training cases and the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry
from napari_dglandmark.model.pipeline import PipelineConfig
from tests.conftest import SHARED_DATA, require_shared
from training.detector import DetectorRecipe, DetectorTrainer
from training.real_heads import (
    BRAIN_CLASSES,
    FREESURFER_BRAIN,
    LabelHead,
    _remap,
    held_out,
    label_head_case,
    load_heads,
    read_label_head,
    save_head,
    transfer_landmarks,
)
from training.recipes import load_recipe


def test_freesurfer_labels_become_brain_classes_and_extra_classes_their_own():
    values = np.array([0, 2, 41, 3, 42, 4, 24, 10, 49, 507, 511, 507, 530])
    out = _remap(values, FREESURFER_BRAIN)
    assert out.tolist() == [0, 3, 3, 2, 2, 1, 1, 4, 4, 5, 6, 5, 7]


def _toy_head(shift_mm=(0.0, 0.0, 0.0)) -> tuple[LabelHead, Landmarks]:
    """A 2 mm phantom 'brain': white matter ellipsoid, grey rim, a CSF 'ventricle', a skull class outside."""
    n = 48
    zz, yy, xx = np.indices((n, n, n), dtype=float)
    geom = Geometry((n, n, n), (2.0, 2.0, 2.0), (-47.0, -47.0, -47.0), np.eye(3))
    c = (n - 1) / 2 + np.asarray(shift_mm)[::-1] / 2.0  # (z, y, x) index centre
    r = np.sqrt(((zz - c[0]) / 14) ** 2 + ((yy - c[1]) / 17) ** 2 + ((xx - c[2]) / 13) ** 2)
    labels = np.zeros((n, n, n), np.uint8)
    labels[r < 1.35] = 5  # skull
    labels[r < 1.2] = 2
    labels[r < 0.95] = 3
    vent = np.sqrt(((zz - c[0] - 3) / 4) ** 2 + ((yy - c[1] + 4) / 7) ** 2 + ((xx - c[2] - 4) / 3) ** 2) < 1
    labels[vent] = 1
    centre = geom.index_to_physical(np.array([[(n - 1) / 2] * 3]))[0] + np.asarray(shift_mm)
    pts = centre + np.array([[0, 0, 0], [8, -8, 6], [-10, 12, -4]], float)
    return LabelHead("toy/head", labels, geom, "toy"), Landmarks(["a", "b", "c"], pts)


def test_transfer_recovers_a_known_shift():
    """Points move from the template to the person (the inverse of the image transform): a head shifted by
    (6, -4, 5) mm carries the template's landmarks shifted by the same amount."""
    pytest.importorskip("ants")
    template, truth = _toy_head()
    shift = np.array([6.0, -4.0, 5.0])
    person, expected = _toy_head(tuple(shift))
    brain = template.brain_t1_like()
    moved, report = transfer_landmarks(brain, truth, person.brain_t1_like(), spacing_mm=2.0, iterations=(20, 10, 0))
    err = np.linalg.norm(moved.positions - expected.positions, axis=1)
    assert err.max() < 1.5, (moved.positions, expected.positions)
    assert report["correlation_after"] > 0.9


def test_save_and_load_heads_round_trip(tmp_path):
    head, lms = _toy_head()
    save_head(tmp_path, head, lms, {"note": "toy"})
    (loaded, lm2), = load_heads(tmp_path)
    assert loaded.name == "toy/head" and loaded.source == "toy"
    np.testing.assert_array_equal(loaded.labels, head.labels)
    np.testing.assert_allclose(loaded.geometry.origin, head.geometry.origin)
    np.testing.assert_allclose(lm2.positions, lms.positions, atol=1e-4)


def test_held_out_takes_every_fifth_of_each_set():
    names = [f"a/{k:02d}" for k in range(10)] + [f"b/{k:02d}" for k in range(7)]
    assert held_out(names) == {"a/04", "a/09", "b/04"}


def _small_recipe(**kw) -> DetectorRecipe:
    return DetectorRecipe(
        pipeline=PipelineConfig(coarse_spacing=4.0, coarse_size=(24, 24, 24), fine_spacing=2.0,
                                fine_size=(12, 12, 12), fine_iterations=1),
        coarse_net=dict(name="resunet3d", base_width=4, depth=2, blocks_per_stage=1),
        fine_net=dict(name="resunet3d", base_width=4, depth=1, blocks_per_stage=1),
        batch_coarse=2, batch_fine=4, rotation_deg=5.0, p_large_rotation=0.0, **kw)


def test_label_head_items_are_random_contrasts_with_their_landmarks_inside():
    head, lms = _toy_head()
    recipe = _small_recipe()
    case = label_head_case(head, lms, lms.names, recipe.pipeline)
    assert case.tissues_pooled.shape[0] == head.classes == BRAIN_CLASSES + 1
    trainer = DetectorTrainer(recipe, lms.names)
    x1, pts = trainer.coarse_batch([case])
    x2, _ = trainer.coarse_batch([case])
    assert x1.shape == (2, 1, 24, 24, 24) and float(x1.std()) > 0.05
    assert not torch.allclose(x1, x2)  # a new contrast every draw
    assert ((pts >= 0) & (pts <= 23)).all()
    xf, pf, ch = trainer.fine_batch([case])
    assert xf.shape == (4, 1, 12, 12, 12) and float(xf.std()) > 0.02
    assert set(ch.tolist()) <= {0, 1, 2}


def test_field_of_view_cut_removes_only_what_lies_beyond_the_landmarks():
    recipe = _small_recipe(p_fov_cut=1.0, fov_margin_mm=(8.0, 8.0))
    trainer = DetectorTrainer(recipe, ["a"])
    image = torch.ones(1, 1, 24, 24, 24)
    target = np.array([[10.0, 12.0, 11.0]])
    cuts = [trainer._cut_field_of_view(image, target, 4.0) for _ in range(20)]
    for cut in cuts:
        assert float(cut[0, 0, 11, 12, 10]) == 1.0  # the landmark's voxel stays
        assert float(cut.mean()) < 1.0  # something was cut
        kept = cut[0, 0] > 0
        # 8 mm = 2 voxels of margin around the landmark on the cut side are never removed
        assert kept[9:14, 10:15, 8:13].all()


def test_case_weights_set_how_often_each_case_is_drawn():
    head, lms = _toy_head()
    recipe = _small_recipe()
    a = label_head_case(head, lms, lms.names, recipe.pipeline)
    b = label_head_case(head, lms, lms.names, recipe.pipeline)
    a.weight, b.weight = 0.9, 0.1
    trainer = DetectorTrainer(recipe, lms.names)
    picks = [trainer._pick([a, b]) is a for _ in range(400)]
    assert 0.83 < np.mean(picks) < 0.96


def test_bundled_recipe_loads_and_unknown_keys_are_errors(tmp_path):
    recipe = load_recipe("afids32_v4")
    assert recipe.init == "afids32" and recipe.stages == ("coarse", "fine")
    assert recipe.sources.label_heads == "real-heads" and recipe.detector["p_fov_cut"] > 0
    DetectorRecipe(**recipe.detector)  # every detector key is a real setting
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[detector]\ncoarse_stepz = 3\n')
    with pytest.raises(DGLandmarkError, match="coarse_stepz") as exc:
        load_recipe(str(bad))
    assert "bad.toml" in str(exc.value)
    bad.write_text('name = "x"\nstages = ["coarse", "medium"]\n')
    with pytest.raises(DGLandmarkError, match="medium"):
        load_recipe(str(bad))
    with pytest.raises(DGLandmarkError, match="no such recipe"):
        load_recipe("afids99")


def _tiny_recipe(tmp_path) -> Path:
    """Two prepared toy heads and a tiny recipe training on them (no template, no start model)."""
    heads = tmp_path / "heads"
    for k, shift in enumerate([(0, 0, 0), (4, -2, 2)]):
        head, lms = _toy_head(shift)
        head.name = f"toy/head{k}"
        from napari_dglandmark.protocols import load_protocol

        full = Landmarks(load_protocol("afids32").names, np.resize(lms.positions, (32, 3)))
        save_head(heads, head, full, {})
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f"""name = "tiny"
protocol = "afids32"
init = ""
[sources]
template = false
label_heads = "{heads}"
held_out_every = 100
[detector]
coarse_steps = 2
fine_steps = 2
pretrain_coarse_steps = 0
pretrain_fine_steps = 0
batch_coarse = 1
batch_fine = 2
val_every = 2
coarse_net = {{name = "resunet3d", base_width = 4, depth = 2, blocks_per_stage = 1, norm = "instance"}}
fine_net = {{name = "resunet3d", base_width = 4, depth = 1, blocks_per_stage = 1, norm = "instance"}}
""")
    return recipe


def test_finetune_recipe_runs_and_resumes_from_the_command_line(tmp_path):
    """``dglandmark-train finetune --recipe`` on prepared heads: trains both networks, saves a model whose
    metadata names the recipe and the heads, and a second call with --resume reuses the finished stages."""
    from napari_dglandmark.model.checkpoint import read_metadata
    from training.cli import main

    recipe = _tiny_recipe(tmp_path)
    out = tmp_path / "run"
    assert main(["finetune", "--recipe", str(recipe), "--out", str(out), "--device", "cpu"]) == 0
    meta = read_metadata(out / "model.safetensors")
    assert meta["recipe"]["file"] == "tiny.toml"
    assert meta["data"]["label_heads"]["trained"] == ["toy/head0", "toy/head1"]
    assert [r["stage"] for r in meta["training"]["history"]][-1] == "fine"
    first = (out / "coarse" / "model.safetensors").stat().st_mtime_ns
    assert main(["finetune", "--recipe", str(recipe), "--out", str(out), "--device", "cpu", "--resume"]) == 0
    assert (out / "coarse" / "model.safetensors").stat().st_mtime_ns == first
    assert json.loads((out / "model.json").read_text())["recipe"]["file"] == "tiny.toml"


def test_stages_run_side_by_side_combine_into_one_model(tmp_path):
    """``--stages coarse`` and ``--stages fine`` in two runs, then ``--combine``: the coarse weights of the
    first run, the fine weights of the second, both histories; runs of another recipe are refused."""
    from napari_dglandmark.model.checkpoint import load_checkpoint, read_metadata
    from training.cli import main

    recipe = _tiny_recipe(tmp_path)
    runs = {}
    for stage in ("coarse", "fine"):
        runs[stage] = tmp_path / stage
        assert main(["finetune", "--recipe", str(recipe), "--out", str(runs[stage]), "--device", "cpu",
                     "--stages", stage]) == 0
    models = {k: v / "model.safetensors" for k, v in runs.items()}
    assert main(["finetune", "--recipe", str(recipe), "--out", str(tmp_path / "both"), "--combine",
                 str(models["coarse"]), str(models["fine"])]) == 0
    both, meta = load_checkpoint(tmp_path / "both" / "model.safetensors")
    coarse, _ = load_checkpoint(models["coarse"])
    fine, _ = load_checkpoint(models["fine"])
    for name, tensor in both.state_dict().items():
        source = coarse if name.startswith("coarse.") else fine
        assert torch.equal(tensor, source.state_dict()[name]), name
    assert not all(torch.equal(a, b) for a, b in zip(coarse.fine.state_dict().values(),
                                                      fine.fine.state_dict().values(), strict=True))
    assert {r["stage"] for r in meta["training"]["history"]} == {"coarse", "fine"}
    assert meta["recipe"]["stages"] == ["coarse", "fine"]
    assert set(meta["provenance"]) == {"coarse_from", "fine_from"}
    other = recipe.with_name("other.toml")
    other.write_text(recipe.read_text().replace("coarse_steps = 2", "coarse_steps = 3"))
    assert main(["finetune", "--recipe", str(other), "--out", str(tmp_path / "other"), "--device", "cpu",
                 "--stages", "coarse"]) == 0
    assert main(["finetune", "--recipe", str(recipe), "--out", str(tmp_path / "mixed"), "--combine",
                 str(tmp_path / "other" / "model.safetensors"), str(models["fine"])]) == 2
    assert read_metadata(models["fine"])["recipe"]["stages"] == ["fine"]
    assert main(["finetune", "--recipe", str(recipe), "--out", str(tmp_path / "swapped"), "--combine",
                 str(models["fine"]), str(models["coarse"])]) == 2  # each run must have trained its stage
    assert not (tmp_path / "swapped" / "model.safetensors").exists()


@pytest.mark.shared_data
def test_a_real_label_map_reads_as_a_head_in_physical_space():
    path = require_shared(SHARED_DATA / "label-maps" / "synthseg-20" / "training_seg_01.nii.gz")
    head = read_label_head(path)
    assert head.name == "synthseg-20/training_seg_01" and head.geometry.spacing == (1.0, 1.0, 1.0)
    counts = np.bincount(head.labels.ravel())
    assert all(counts[c] > 1000 for c in range(1, BRAIN_CLASSES))  # CSF, grey, white, deep grey present
    assert head.classes > BRAIN_CLASSES  # extra-cerebral classes kept
    # cropping keeps physical positions: the white-matter centroid is where the uncropped map has it
    from napari_dglandmark.io import read_volume

    full = read_volume(path)
    in_full = np.argwhere(np.isin(np.rint(full.array), FREESURFER_BRAIN[3]))[:, ::-1].mean(0)
    in_crop = np.argwhere(head.labels == 3)[:, ::-1].mean(0)
    np.testing.assert_allclose(head.geometry.index_to_physical(in_crop[None])[0],
                               full.index_to_physical(in_full[None])[0], atol=1e-3)
