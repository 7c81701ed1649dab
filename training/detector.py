"""Training the two-stage detector (the bundled default model's recipe).

Stage 0 (optional, BaPDG): boundary-aware pre-training of both networks on a segmentation source.
Stage 1: coarse network on the whole head at ``coarse_spacing`` (spatial softmax, cross-entropy).
Stage 2: fine network on high-resolution patches around each landmark, read on its own channel.
Augmentation is drawn in physical space and applied while sampling the model grids from the
original volumes, so images, masks and landmarks always move together.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_dglandmark.io.atomic import write_text_atomic
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Volume
from napari_dglandmark.model.checkpoint import save_checkpoint
from napari_dglandmark.model.decode import decode
from napari_dglandmark.model.networks import TwoStageDetector
from napari_dglandmark.model.pipeline import (
    PipelineConfig,
    Source,
    coarse_grid,
    coarse_input,
    fine_grids,
    pooled_copy,
    prepare_source,
)
from napari_dglandmark.model.resample import grid_points, resample, sample_at

from . import ddp
from .augment import AugmentConfig, apply_intensity
from .config import TrainConfig
from .loop import RESUME_JSON, Task, init_from_checkpoint, train
from .losses import logcosh, mixing_loss, mse
from .shapes import ThinPlateSpline, blend_shape, landmark_warp
from .synth import BRAIN_TISSUES, synthesize_contrast
from .targets import boundary_distance_target, gaussian_heatmaps, sobel_magnitude
from .warps import ElasticField, physical_affine, random_rotation, warp_points

Log = Callable[[dict], None]


@dataclass
class DetectorRecipe:
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    coarse_net: dict = field(default_factory=lambda: dict(name="resunet3d", base_width=16, depth=3,
                                                           blocks_per_stage=1, norm="instance"))
    fine_net: dict = field(default_factory=lambda: dict(name="resunet3d", base_width=16, depth=2,
                                                         blocks_per_stage=1, norm="instance"))
    pretrain_coarse_steps: int = 150
    pretrain_fine_steps: int = 150
    coarse_steps: int = 1500
    fine_steps: int = 2000
    batch_coarse: int = 2
    batch_fine: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    sigma_coarse_vox: float = 1.5
    sigma_fine_vox: float = 1.5
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translation_mm: float = 10.0
    elastic_mm: float = 3.0
    fine_offset_mm: float = 3.0  # std of the fine patch centre around the truth (coarse error model)
    fine_offset_max_mm: float = 8.0
    intensity: str = "default"  # AugmentConfig preset for the intensity part ("none" = off)
    p_head_invert: float = 0.2
    max_dist: float = 5.0  # boundary band, in voxels of the grid being trained
    pretrain_target: str = "boundary"  # boundary (BaPDG) | mask (SegDG) | edge (EdgeDG: Sobel input, mask target)
    pretrain_loss: str = "mix"  # mix (log-cosh -> MSE) | mse | logcosh
    # realistic geometry and contrast (robust default model): see training.shapes / training.synth
    p_large_rotation: float = 0.0  # coarse items whose pose is drawn up to ``large_rotation_deg``
    large_rotation_deg: float = 55.0
    center_jitter_mm: float = 5.0  # std of the coarse grid centre around the head centre
    p_shape: float = 0.0  # items warped (TPS) to a real person's landmark configuration
    shape_blend: tuple[float, float] = (0.3, 1.1)
    shape_noise_mm: float = 1.0
    p_synth: float = 0.0  # items drawn as a random contrast from the tissue label map
    p_skull_strip: float = 0.15
    # field of view: coarse items cut by a plane beyond the landmarks (top of the head cut off, no neck,
    # no face), ``fov_margin_mm`` from the outermost landmark on that side
    p_fov_cut: float = 0.0
    fov_margin_mm: tuple[float, float] = (8.0, 60.0)
    val_every: int = 250
    log_every: int = 25
    checkpoint_every: int = 250  # resume state of the running stage
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pipeline"] = self.pipeline.to_dict()
        return d


@dataclass
class Case:
    source: Source
    landmarks: np.ndarray  # [L, 3] LPS, NaN where missing
    boundary_coarse: torch.Tensor | None = None  # pre-training target maps on the source grid
    boundary_fine: torch.Tensor | None = None
    boundary_points: np.ndarray | None = None  # LPS points on the structure's surface
    tissues: torch.Tensor | None = None  # [C, D, H, W] tissue probabilities on the source grid
    tissues_pooled: torch.Tensor | None = None  # the same on the pooled (coarse) grid
    shapes: list[np.ndarray] = field(default_factory=list)  # real configurations in this case's frame
    labels: torch.Tensor | None = None  # [D, H, W] tissue classes on the source grid (label-map heads: always synthetic)
    weight: float = 1.0  # how often this case is drawn, relative to the others


STAGES = ("pretrain-coarse", "pretrain-fine", "coarse", "fine")


class StageTask(Task):
    """One stage of the two-stage detector as a task of the one loop: batches from the trainer's
    samplers (drawn with the loop's own RNGs, so a resumed stage takes the same steps)."""

    def __init__(self, trainer: DetectorTrainer, batch_fn, loss_fn, validate_fn=None) -> None:
        self.trainer, self.batch_fn, self.loss_fn, self.validate_fn = trainer, batch_fn, loss_fn, validate_fn

    def batch(self, rng, gen, size, step):
        self.trainer.rng, self.trainer.gen = rng, gen
        return self.batch_fn(size)

    def loss(self, pred, target, step):
        return self.loss_fn(pred, target, step)

    def validate(self, network, device):
        return None if self.validate_fn is None else self.validate_fn()


class DetectorTrainer:
    """Trains a TwoStageDetector on landmark cases (and optionally pre-trains on segmentations)."""

    def __init__(self, recipe: DetectorRecipe, landmark_names: Sequence[str], log: Log | None = None,
                 device: str = "cpu", run_dir: str | Path | None = None, resume: bool = False,
                 info: ddp.DistInfo | None = None, progress: bool = False) -> None:
        self.recipe = recipe
        self._tmp = None if run_dir is not None else tempfile.TemporaryDirectory(prefix="dglandmark-")
        self.run_dir = Path(run_dir if run_dir is not None else self._tmp.name)
        self.resume, self.progress = resume, progress
        self.info = info or ddp.DistInfo()
        self.names = list(landmark_names)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(recipe.seed)
        torch.manual_seed(recipe.seed)
        self.gen = torch.Generator().manual_seed(recipe.seed)
        n = len(self.names)
        self.network = TwoStageDetector(dict(recipe.coarse_net, in_channels=1, out_channels=n),
                                        dict(recipe.fine_net, in_channels=1, out_channels=n)).to(self.device)
        # apply_intensity reads only the intensity fields of a preset, so the spatial ones are inert here
        self.intensity = None if recipe.intensity == "none" else AugmentConfig.preset(recipe.intensity)
        self.log = log or (lambda row: None)
        self.history: list[dict] = []
        #: asked before every optimisation step of every stage; True ends the stage (``loop.train``)
        self.should_stop: Callable[[], bool] | None = None

    # ------------------------------------------------------------------ sampling
    def _random_affine(self, center: np.ndarray) -> np.ndarray:
        r = self.recipe
        return physical_affine(center, random_rotation(self.rng, r.rotation_deg), self.rng.uniform(*r.scale),
                               self.rng.uniform(-r.translation_mm, r.translation_mm, 3))

    def _augment_intensity(self, x: torch.Tensor) -> torch.Tensor:
        if self.intensity is not None:
            x = apply_intensity(x, self.intensity, self.gen)
        if self.recipe.p_head_invert > 0:
            flip = torch.rand(x.shape[0], generator=self.gen) < self.recipe.p_head_invert
            head = x > 0.05
            inv = torch.where(head, 1.0 - x, x)
            x = torch.where(flip.view(-1, 1, 1, 1, 1), inv, x)
        return x

    def _pick(self, cases: Sequence[Case]) -> Case:
        """A case drawn by its ``weight`` (uniformly when all weights are equal)."""
        w = np.array([c.weight for c in cases], float)
        if np.all(w == w[0]):
            return cases[self.rng.integers(len(cases))]
        return cases[self.rng.choice(len(cases), p=w / w.sum())]

    # ------------------------------------------------------------------ realistic sampling
    def _realistic(self, case: Case) -> bool:
        r = self.recipe
        return case.tissues is not None or case.labels is not None or bool(case.shapes) or r.p_large_rotation > 0

    def _cut_field_of_view(self, image: torch.Tensor, target_index: np.ndarray, spacing: float) -> torch.Tensor:
        """With ``p_fov_cut``: the coarse item without what lies beyond a plane past the landmarks on one
        side (a scan with the top of the head cut off, without neck or face, ...)."""
        r = self.recipe
        if self.rng.random() >= r.p_fov_cut:
            return image
        defined = target_index[~np.isnan(target_index).any(1)]
        axis = int(self.rng.choice([0, 1, 2], p=[0.2, 0.3, 0.5]))  # (i, j, k) = (L-R, P-A, S-I); mostly S/I cuts
        upper = self.rng.random() < 0.5
        margin = self.rng.uniform(*r.fov_margin_mm) / spacing
        dim = 4 - axis  # tensor dims (B, C, z, y, x)
        n = image.shape[dim]
        edge = defined[:, axis].max() + margin if upper else defined[:, axis].min() - margin
        coord = torch.arange(n, dtype=torch.float32).view([-1 if d == dim else 1 for d in range(5)])
        keep = coord <= edge if upper else coord >= edge
        return image * keep

    def _random_warp(self, case: Case) -> tuple[ThinPlateSpline | None, np.ndarray]:
        """A map from a real person's anatomy to the case's source, and that anatomy's landmarks."""
        r = self.recipe
        if not case.shapes or self.rng.random() >= r.p_shape:
            return None, case.landmarks
        shape = case.shapes[self.rng.integers(len(case.shapes))]
        target = blend_shape(case.landmarks, shape, self.rng.uniform(*r.shape_blend))
        target = target + self.rng.normal(scale=r.shape_noise_mm, size=target.shape)
        target = np.where(np.isnan(case.landmarks), np.nan, target)
        return landmark_warp(target, case.landmarks), target

    def _sample_item(self, case: Case, grid, pose: np.ndarray, warp: ThinPlateSpline | None,
                     coarse: bool) -> torch.Tensor:
        """[1, 1, d, h, w]: ``case`` seen on ``grid`` through ``pose`` (4x4, output -> anatomy) and ``warp``."""
        r = self.recipe
        a = torch.as_tensor(pose, dtype=torch.float32)
        p = grid_points(grid).reshape(-1, 3) @ a[:3, :3].T + a[:3, 3]
        if warp is not None:
            p = warp(p)
        p = p.reshape(1, *grid.shape, 3)
        geom = case.source.pooled_geometry if coarse else case.source.geometry
        image = case.source.pooled if coarse else case.source.image
        if case.labels is not None:  # a real person's head from its label map: a random contrast every time
            strip = torch.tensor([self.rng.random() < r.p_skull_strip])
            if coarse:
                tissues = sample_at(case.tissues_pooled, geom, p)
            else:
                classes = case.tissues_pooled.shape[0]
                found = sample_at(case.labels, geom, p, mode="nearest")[:, 0].long()
                tissues = F.one_hot(found, classes).permute(0, 4, 1, 2, 3).float()
            return synthesize_contrast(tissues, self.gen, strip, max_blur_vox=0.6 if coarse else 1.2)
        synth = case.tissues is not None and self.rng.random() < r.p_synth
        strip = case.tissues is not None and self.rng.random() < r.p_skull_strip
        if not synth and not strip:
            return sample_at(image, geom, p)
        tissues = sample_at(case.tissues_pooled if coarse else case.tissues, geom, p)
        if synth:
            return synthesize_contrast(tissues, self.gen, torch.tensor([strip]), max_blur_vox=0.6 if coarse else 1.2)
        return sample_at(image, geom, p) * tissues[:, list(BRAIN_TISSUES)].sum(1, keepdim=True)

    @staticmethod
    def _into_output(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Anatomy points -> output physical points (inverse of ``pose``)."""
        inv = np.linalg.inv(pose)
        return points @ inv[:3, :3].T + inv[:3, 3]

    def _realistic_coarse_item(self, case: Case):
        r, cfg = self.recipe, self.recipe.pipeline
        jitter = np.clip(self.rng.normal(scale=r.center_jitter_mm, size=3), -2.5 * r.center_jitter_mm,
                         2.5 * r.center_jitter_mm)
        grid = coarse_grid(cfg, case.source.center + jitter)
        large = self.rng.random() < r.p_large_rotation
        rot = random_rotation(self.rng, r.large_rotation_deg if large else r.rotation_deg)
        pose = physical_affine(case.source.center, rot, self.rng.uniform(*r.scale),
                               self.rng.uniform(-r.translation_mm, r.translation_mm, 3))
        warp, target = self._random_warp(case)
        image = self._sample_item(case, grid, pose, warp, coarse=True)
        index = grid.physical_to_index(self._into_output(target, pose))
        return self._cut_field_of_view(image, index, cfg.coarse_spacing), index

    def _realistic_fine_item(self, case: Case):
        r, cfg = self.recipe, self.recipe.pipeline
        warp, target = self._random_warp(case)
        defined = np.flatnonzero(~np.isnan(target).any(1))
        k = int(defined[self.rng.integers(len(defined))])
        anchor = target[k]
        offset = np.clip(self.rng.normal(scale=r.fine_offset_mm, size=3), -r.fine_offset_max_mm, r.fine_offset_max_mm)
        pose = physical_affine(anchor, random_rotation(self.rng, r.rotation_deg), self.rng.uniform(*r.scale), np.zeros(3))
        grid = fine_grids(cfg, (anchor + offset)[None])[0]
        image = self._sample_item(case, grid, pose, warp, coarse=False)
        return image, grid.physical_to_index(self._into_output(target[k:k + 1], pose))[0], k

    def coarse_batch(self, cases: Sequence[Case], with_boundary: bool = False, count: int | None = None):
        r, cfg = self.recipe, self.recipe.pipeline
        images, targets, points = [], [], []
        for _ in range(count or r.batch_coarse):
            case = self._pick(cases)
            if not with_boundary and self._realistic(case):
                image, idx = self._realistic_coarse_item(case)
                images.append(image)
                points.append(idx)
                continue
            grid = coarse_grid(cfg, case.source.center + self.rng.normal(scale=5.0, size=3))
            affine = self._random_affine(case.source.center)
            elastic = ElasticField(grid, self.rng, r.elastic_mm) if r.elastic_mm > 0 else None
            disp = elastic.dense_source_index(case.source.pooled_geometry) if elastic else None
            images.append(coarse_input(case.source, grid, [affine], disp))
            if with_boundary:
                dfull = elastic.dense_source_index(case.source.geometry) if elastic else None
                targets.append(resample(case.boundary_coarse, case.source.geometry, grid, [affine], dfull))
            else:
                pts = warp_points(case.landmarks, affine, grid, elastic)
                points.append(grid.physical_to_index(pts))
        x = self._augment_intensity(torch.cat(images))
        if with_boundary:
            return x, torch.cat(targets)
        return x, torch.as_tensor(np.stack(points), dtype=torch.float32)

    def fine_batch(self, cases: Sequence[Case], with_boundary: bool = False, count: int | None = None):
        r, cfg = self.recipe, self.recipe.pipeline
        images, targets, points, channels = [], [], [], []
        for _ in range(count or r.batch_fine):
            case = self._pick(cases)
            if not with_boundary and self._realistic(case):
                image, idx, k = self._realistic_fine_item(case)
                images.append(image)
                points.append(idx)
                channels.append(k)
                continue
            if with_boundary:
                k = 0
                anchor = case.boundary_points[self.rng.integers(len(case.boundary_points))]
            else:
                defined = np.flatnonzero(~np.isnan(case.landmarks).any(1))
                k = int(defined[self.rng.integers(len(defined))])
                anchor = case.landmarks[k]
            offset = np.clip(self.rng.normal(scale=r.fine_offset_mm, size=3), -r.fine_offset_max_mm, r.fine_offset_max_mm)
            affine = physical_affine(anchor, random_rotation(self.rng, r.rotation_deg), self.rng.uniform(*r.scale),
                                     np.zeros(3))
            grid = fine_grids(cfg, (anchor + offset)[None])[0]
            images.append(resample(case.source.image, case.source.geometry, grid, [affine]))
            if with_boundary:
                targets.append(resample(case.boundary_fine, case.source.geometry, grid, [affine]))
            else:
                pts = warp_points(case.landmarks[k:k + 1], affine, grid)
                points.append(grid.physical_to_index(pts)[0])
                channels.append(k)
        x = self._augment_intensity(torch.cat(images))
        if with_boundary:
            return x, torch.cat(targets)
        return x, torch.as_tensor(np.stack(points), dtype=torch.float32), torch.as_tensor(channels)

    # ------------------------------------------------------------------ losses
    @staticmethod
    def softmax_ce(logits: torch.Tensor, points: torch.Tensor, sigma: float) -> torch.Tensor:
        """Cross-entropy between each channel's spatial softmax and a normalised Gaussian at the landmark."""
        b, n = logits.shape[:2]
        shape = tuple(logits.shape[2:])
        target = gaussian_heatmaps(points, shape, sigma, peak=1.0)
        mass = target.flatten(2).sum(-1)
        valid = mass > 1e-3
        target = target.flatten(2) / mass.clamp_min(1e-6)[..., None]
        logp = F.log_softmax(logits.flatten(2).float(), -1)
        ce = -(target * logp).sum(-1)
        return (ce * valid).sum() / valid.sum().clamp_min(1)

    # ------------------------------------------------------------------ stages
    def _stage_config(self, steps: int, batch: int, stage_index: int) -> TrainConfig:
        """The one loop's settings for a stage: AdamW, 10 % warm-up then cosine, clipping at 5."""
        r = self.recipe
        return TrainConfig(optimizer="adamw", lr=r.lr, weight_decay=r.weight_decay, schedule="cosine",
                           warmup_steps=max(1, steps // 10), max_steps=steps, batch_size=batch, grad_clip=5.0,
                           val_every=r.val_every, log_every=r.log_every, checkpoint_every=r.checkpoint_every,
                           seed=r.seed + 1000 * stage_index)

    def _loop(self, stage: str, steps: int, module: torch.nn.Module, task: Task, batch: int) -> None:
        """Train one network of the pair with the one training loop (``training.loop.train``).

        Each stage has its own folder under ``run_dir`` (resume state, metrics.csv, best and final
        weights); with ``resume`` a finished stage is loaded and skipped, an unfinished one continues.
        """
        if steps <= 0:
            return
        index = STAGES.index(stage)
        stage_dir = self.run_dir / stage
        final = stage_dir / "model.safetensors"
        if self.resume and final.is_file():
            init_from_checkpoint(module, final)
            module.eval()
            return
        resume = self.resume and (stage_dir / RESUME_JSON).is_file()

        def on_row(row: dict) -> None:
            entry = {"stage": stage, "step": int(row["step"])}
            for key in ("loss", "lr", "val_mre_mm"):
                if row.get(key) not in (None, ""):
                    entry[key] = float(row[key])
            entry["seconds"] = row.get("seconds")
            self.history.append(entry)
            self.log(entry)

        train(module, task, self._stage_config(steps, batch, index), stage_dir, self.device,
              metadata={"stage": stage}, resume=resume, info=self.info, progress=self.progress, on_row=on_row,
              should_stop=self.should_stop)
        if final.is_file():  # the best weights by validation (else the last), as the loop selected them
            init_from_checkpoint(module, final)
        if self.info.enabled:
            ddp.barrier(self.info)
        module.eval()

    def _pretrain_loss(self, pred: torch.Tensor, target: torch.Tensor, step: int, total: int) -> torch.Tensor:
        """The one-channel target is compared with every output channel (as in the paper)."""
        target = target.to(self.device).expand_as(pred)
        kind = self.recipe.pretrain_loss
        if kind == "mix":
            # an "epoch" is a tenth of the stage, so t = (epoch + 1) / (E + 1) moves in ten steps
            epochs = 10
            return mixing_loss(pred, target, min(epochs - 1, (step - 1) * epochs // total), epochs)
        if kind == "mse":
            return mse(pred, target)
        if kind == "logcosh":
            return logcosh(pred, target)
        raise ValueError(f"unknown pre-training loss {kind!r}")

    def _pretrain_input(self, x: torch.Tensor) -> torch.Tensor:
        return sobel_magnitude(x) if self.recipe.pretrain_target == "edge" else x

    def pretrain(self, seg_cases: Sequence[Case]) -> None:
        """Pre-train both networks to regress the segmentation-derived map (BaPDG, SegDG or EdgeDG)."""
        r = self.recipe
        net = self.network

        def coarse_batch(size: int):
            x, t = self.coarse_batch(seg_cases, with_boundary=True, count=size)
            return self._pretrain_input(x), t

        def fine_batch(size: int):
            x, t = self.fine_batch(seg_cases, with_boundary=True, count=size)
            return self._pretrain_input(x), t

        def loss(total: int):
            return lambda pred, target, step: self._pretrain_loss(pred, target, step + 1, total)

        self._loop("pretrain-coarse", r.pretrain_coarse_steps, net.coarse,
                   StageTask(self, coarse_batch, loss(r.pretrain_coarse_steps)), r.batch_coarse)
        self._loop("pretrain-fine", r.pretrain_fine_steps, net.fine,
                   StageTask(self, fine_batch, loss(r.pretrain_fine_steps)), r.batch_fine)

    def _validation_set(self, cases: Sequence[Case], count: int = 4, seed: int = 12345):
        rng_state = self.rng
        self.rng = np.random.default_rng(seed)
        gen_state = self.gen.get_state()
        coarse = [self.coarse_batch(cases, count=1) for _ in range(count)]
        fine = [self.fine_batch(cases) for _ in range(2)]
        self.rng = rng_state
        self.gen.set_state(gen_state)
        return coarse, fine

    def finetune(self, cases: Sequence[Case], stages: Sequence[str] = ("coarse", "fine")) -> None:
        """Train the coarse and/or the fine network on landmark cases."""
        r = self.recipe
        net = self.network
        val_coarse, val_fine = self._validation_set(cases)
        spacing_c, spacing_f = r.pipeline.coarse_spacing, r.pipeline.fine_spacing

        def coarse_batch(size: int):
            return self.coarse_batch(cases, count=size)

        def coarse_loss(pred: torch.Tensor, points: torch.Tensor, step: int) -> torch.Tensor:
            return self.softmax_ce(pred, points, r.sigma_coarse_vox)

        def coarse_val() -> float:
            errs = []
            with torch.no_grad():
                for x, pts in val_coarse:
                    idx, _ = decode(net.coarse(x.to(self.device))[0].cpu(), "softmax-centroid",
                                    r.pipeline.decode_radius_coarse)
                    errs.append(torch.linalg.norm(idx - pts[0], dim=-1) * spacing_c)
            e = torch.cat(errs)
            return float(e[torch.isfinite(e)].mean())

        def fine_batch(size: int):
            x, pts, ch = self.fine_batch(cases, count=size)
            return x, torch.cat([pts, ch[:, None].float()], 1)  # target: (i, j, k, channel)

        def fine_loss(pred: torch.Tensor, target: torch.Tensor, step: int) -> torch.Tensor:
            ch = target[:, 3].long()
            own = pred[torch.arange(len(ch), device=pred.device), ch][:, None]  # patch k is read on channel k
            return self.softmax_ce(own, target[:, None, :3], r.sigma_fine_vox)

        def fine_val() -> float:
            errs = []
            with torch.no_grad():
                for x, pts, ch in val_fine:
                    out = net.fine(x.to(self.device))
                    own = out[torch.arange(len(ch)), ch].cpu()
                    idx, _ = decode(own, "softmax-centroid", r.pipeline.decode_radius_fine)
                    errs.append(torch.linalg.norm(idx - pts, dim=-1) * spacing_f)
            return float(torch.cat(errs).mean())

        if "coarse" in stages:
            self._loop("coarse", r.coarse_steps, net.coarse, StageTask(self, coarse_batch, coarse_loss, coarse_val),
                       r.batch_coarse)
        if "fine" in stages:
            self._loop("fine", r.fine_steps, net.fine, StageTask(self, fine_batch, fine_loss, fine_val), r.batch_fine)

    def save(self, path: str | Path, metadata: dict) -> None:
        meta = {"pipeline": self.recipe.pipeline.to_dict(), "landmark_names": self.names,
                "training": {"recipe": self.recipe.to_dict(), "history": self.history}, **metadata}
        save_checkpoint(path, self.network, meta)


def landmark_case(volume: Volume, landmarks: Landmarks, names: Sequence[str], pipeline: PipelineConfig) -> Case:
    """A training case: the prepared source and landmark positions in ``names`` order."""
    ordered = landmarks.reordered(names, strict=False)
    return Case(prepare_source(volume, pipeline), ordered.positions)


def segmentation_case(volume: Volume, mask: np.ndarray, recipe: DetectorRecipe) -> Case:
    """A pre-training case: image plus the target maps for the coarse and fine grids.

    ``boundary``: exact-EDT distance band around the structure's surface, ``max_dist`` grid voxels
    wide; ``mask`` / ``edge``: the mask itself. Maps live on the source grid and are resampled
    with the image, so augmentation moves them together.
    """
    cfg = recipe.pipeline
    m = torch.as_tensor(mask.astype(bool))[None, None]
    case = Case(prepare_source(volume, cfg), np.zeros((0, 3)))
    if recipe.pretrain_target == "boundary":
        case.boundary_coarse = boundary_distance_target(m, recipe.max_dist * cfg.coarse_spacing, spacing=volume.spacing)[0, 0]
        case.boundary_fine = boundary_distance_target(m, recipe.max_dist * cfg.fine_spacing, spacing=volume.spacing)[0, 0]
    elif recipe.pretrain_target in ("mask", "edge"):
        case.boundary_coarse = case.boundary_fine = m[0, 0].float()
    else:
        raise ValueError(f"unknown pre-training target {recipe.pretrain_target!r}")
    surface = boundary_distance_target(m, 1.0)[0, 0] > 0.999
    edge = surface.nonzero().numpy()[:, ::-1].astype(float)  # (i, j, k)
    pick = np.random.default_rng(0).choice(len(edge), size=min(len(edge), 20000), replace=False)
    case.boundary_points = volume.index_to_physical(edge[pick])
    return case


def write_history(path: Path, history: list[dict]) -> None:
    write_text_atomic(path, "\n".join(json.dumps(r) for r in history) + "\n")


def realistic_case(volume: Volume, landmarks: Landmarks, names: Sequence[str], pipeline: PipelineConfig,
                   tissue_labels: np.ndarray | None = None, shapes: Sequence[np.ndarray] = ()) -> Case:
    """A landmark case that can also be drawn as random contrasts (tissue labels on the volume's
    grid) and warped to real people's configurations (``shapes``, in the volume's frame)."""
    from .synth import one_hot

    case = landmark_case(volume, landmarks, names, pipeline)
    if tissue_labels is not None:
        case.tissues = one_hot(tissue_labels)
        case.tissues_pooled = torch.stack([pooled_copy(t, volume.geometry, pipeline.coarse_spacing)[0]
                                           for t in case.tissues])
    case.shapes = [np.asarray(s, float) for s in shapes]
    return case
