"""The two-stage recipe end to end on a phantom: trains, saves, loads into the inference path."""

from __future__ import annotations

import numpy as np

from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.model.inference import Detector
from napari_dglandmark.model.pipeline import PipelineConfig
from training.detector import DetectorRecipe, DetectorTrainer, landmark_case, segmentation_case


def _phantom():
    arr = np.full((40, 40, 40), 10.0, np.float32)
    arr[8:32, 10:30, 9:31] = 200.0  # a box "head"
    arr[18:22, 18:22, 12:16] = 600.0  # a bright marker
    geom = Geometry(arr.shape, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    names = ["marker", "corner"]
    lms = Landmarks(names, geom.index_to_physical(np.array([[13.5, 19.5, 19.5], [9.0, 10.0, 8.0]])))
    return Volume(arr, geom, "phantom.nii.gz"), lms, (arr > 100)


def _recipe(**kw):
    settings = dict(pretrain_coarse_steps=2, pretrain_fine_steps=2, coarse_steps=25, fine_steps=10, val_every=25)
    settings.update(kw)
    return DetectorRecipe(
        pipeline=PipelineConfig(coarse_spacing=4.0, coarse_size=(24, 24, 24), fine_spacing=2.0,
                                fine_size=(12, 12, 12), fine_iterations=1),
        coarse_net=dict(name="resunet3d", base_width=4, depth=2, blocks_per_stage=1),
        fine_net=dict(name="resunet3d", base_width=4, depth=1, blocks_per_stage=1),
        batch_coarse=2, batch_fine=4, log_every=5, rotation_deg=5.0, elastic_mm=1.0, **settings)


def test_recipe_trains_saves_and_detects(tmp_path):
    volume, landmarks, mask = _phantom()
    recipe = _recipe()
    trainer = DetectorTrainer(recipe, landmarks.names)
    trainer.pretrain([segmentation_case(volume, mask, recipe)])
    trainer.finetune([landmark_case(volume, landmarks, landmarks.names, recipe.pipeline)])
    stages = [r["stage"] for r in trainer.history]
    assert {"pretrain-coarse", "pretrain-fine", "coarse", "fine"} <= set(stages)
    coarse_loss = [r["loss"] for r in trainer.history if r["stage"] == "coarse" and "loss" in r]
    assert coarse_loss[-1] < coarse_loss[0]  # it learns
    path = tmp_path / "m.safetensors"
    trainer.save(path, {"model_name": "phantom", "protocol": ""})
    det = Detector(path, device="cpu")
    pred = det.detect(volume)
    assert pred.names == landmarks.names and np.isfinite(pred.positions).all()


def test_ablation_targets_build(tmp_path):
    volume, _, mask = _phantom()
    for target in ("boundary", "mask", "edge"):
        case = segmentation_case(volume, mask, _recipe(pretrain_target=target))
        t = case.boundary_coarse
        assert t.shape == volume.array.shape and 0 <= float(t.min()) and float(t.max()) <= 1
        if target == "boundary":  # 1 on the surface, falling linearly over max_dist = 5 x 4 mm
            # the centre voxel is 9 voxels (18 mm) from the nearest surface voxel (y = 29)
            assert abs(float(t[20, 20, 20]) - (20 - 18) / 20) < 1e-5 and float(t[8, 20, 20]) == 1.0
        else:
            assert float(t[20, 20, 20]) == 1.0 and float(t[2, 2, 2]) == 0.0


def test_two_stage_recipe_resumes_in_the_one_loop(tmp_path):
    """Each stage runs in training.loop.train with its own run folder; a finished stage is reloaded on
    resume (not retrained), and an interrupted one continues from its saved state."""
    import torch

    volume, landmarks, _ = _phantom()
    recipe = _recipe(pretrain_coarse_steps=0, pretrain_fine_steps=0, coarse_steps=6, fine_steps=4,
                     checkpoint_every=3, val_every=3)
    case = landmark_case(volume, landmarks, landmarks.names, recipe.pipeline)
    first = DetectorTrainer(recipe, landmarks.names, run_dir=tmp_path / "run")
    first.finetune([case])
    for stage in ("coarse", "fine"):
        assert (tmp_path / "run" / stage / "model.safetensors").is_file()
        assert (tmp_path / "run" / stage / "metrics.csv").is_file()
    again = DetectorTrainer(recipe, landmarks.names, run_dir=tmp_path / "run", resume=True)
    again.finetune([case])
    assert again.history == []  # nothing retrained
    for a, b in zip(first.network.state_dict().values(), again.network.state_dict().values(), strict=True):
        assert torch.equal(a, b)
