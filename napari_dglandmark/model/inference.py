"""The one inference path: volume + model -> named landmarks with positions and confidences.

The CLI, the napari widget, the Slicer module and ``dglandmark-train evaluate`` all call
``Detector.detect``. Everything but the networks runs on numpy (resampling, decoding, the quality
review); the networks run on a :mod:`model.runners` runner: ONNX Runtime on the CPU (no torch
import) or torch on any device. Importing this module does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DGLandmarkError
from ..io.geometry import Volume
from ..io.landmarks import Landmarks
from . import quality
from .decode import decode_array
from .pipeline import (
    PipelineConfig,
    Source,
    coarse_grid,
    coarse_input,
    fine_grids,
    fine_input,
    fine_reach_mm,
    fix_swapped_sides,
    prepare_source,
    side_pairs,
)
from .quality import DetectionState
from .registry import DEFAULT_MODEL, ModelInfo, bundled_models, bundled_models_dir, model_info, resolve_model
from .runners import Runner, TorchRunner, open_runner
from .shape import ShapeModel, load_shape_model

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MODEL", "Cancelled", "DetectionState", "Detector", "ModelInfo", "bundled_models",
           "bundled_models_dir", "load_detector", "resolve_model", "rigid_about"]

Progress = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised inside ``detect`` when the caller's ``cancelled()`` returns True."""


def reference_shape(info: ModelInfo) -> ShapeModel | None:
    """The model's reference configuration (metadata ``reference_lps``, in the model's landmark order),
    with the protocol's shape model for spreads and the head centre; None when the model has none."""
    ref = info.metadata.get("reference_lps")
    if ref is None:
        return None
    try:
        protocol_shape = load_shape_model(info.protocol) if info.protocol else None
    except DGLandmarkError:
        protocol_shape = None
    ref = np.asarray(ref, float)
    if protocol_shape is not None and protocol_shape.names == info.landmark_names:
        return ShapeModel(info.landmark_names, ref, protocol_shape.spread, protocol_shape.source,
                          protocol_shape.head_center)
    return ShapeModel(info.landmark_names, ref, np.full(len(ref), 3.0))


class Detector:
    """A loaded two-stage model, reused across images.

    ``backend``: ``auto`` (torch on a CUDA GPU, else ONNX Runtime on the CPU), ``onnx`` or ``torch``;
    ``device`` is the torch device (``auto`` = CUDA, then MPS, then CPU). ``threads``: CPU threads
    for the networks (0: the runtime's choice).
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto", backend: str = "auto",
                 threads: int = 0) -> None:
        self.info = model_info(model, two_stage=True)
        self.threads = int(threads)
        self.runner: Runner = open_runner(self.info, backend, device, self.threads)
        self.config = PipelineConfig.from_dict(self.info.metadata.get("pipeline", {}))
        self.bilateral_pairs = [tuple(p) for p in self.info.metadata.get("bilateral_pairs", [])]
        self.side_pairs = side_pairs(self.names, self.bilateral_pairs)
        self.shape = reference_shape(self.info)
        self.review_shape = quality.protocol_shape(self.names, self.shape, self.info.protocol)
        self.assess_quality = True  # plausibility, review flags and the image warning (``model.quality``)
        self.last_assessment = None  # the last detection's ``quality.Assessment`` (benchmarks, debugging)

    @property
    def names(self) -> list[str]:
        return self.info.landmark_names

    @property
    def backend(self) -> str:
        """``"onnx"`` or ``"torch"``: what runs the networks."""
        return self.runner.backend

    @property
    def device(self) -> str:
        return self.runner.device

    @property
    def network(self) -> torch.nn.Module:
        """The torch ``TwoStageDetector`` (loaded on first use when the networks run on ONNX Runtime)."""
        if isinstance(self.runner, TorchRunner):
            return self.runner.network
        if getattr(self, "_torch_network", None) is None:
            from .checkpoint import load_checkpoint

            self._torch_network, _ = load_checkpoint(self.info.path)
        return self._torch_network

    @network.setter
    def network(self, network: torch.nn.Module) -> None:
        """Run detection on ``network`` from now on (torch, on the device its weights are on), e.g. weights
        being trained."""
        device = next(network.parameters()).device
        self.runner = TorchRunner(network, device, self.threads)

    def _coarse(self, source: Source, center: np.ndarray, frame: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Coarse positions (LPS) and confidences on a grid around ``center``, seen through ``frame``."""
        grid = coarse_grid(self.config, center)
        logits = self.runner.run("coarse", coarse_input(source, grid, [frame]))[0]
        index, conf = decode_array(logits, "softmax-centroid", self.config.decode_radius_coarse)
        pos = grid.index_to_physical(index)
        if frame is not None:
            pos = pos @ frame[:3, :3].T + frame[:3, 3]
        return pos, conf

    def _canonical(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(rotation, head centre in the image) from a robust similarity fit of the reference
        configuration to ``pos``; None for models without a reference or when the fit is unusable."""
        if self.shape is None:
            return None
        try:
            fit, res = self.shape.fit(pos)
        except DGLandmarkError:
            return None
        if not (0.6 < fit.scale < 1.6) or np.sum(res < 10.0) < 8:
            return None
        center = self.shape.head_center if self.shape.head_center is not None else self.shape.reference.mean(0)
        return fit.rotation, fit.apply(center[None])[0]

    def reviewer(self) -> quality.Reviewer:
        """What the quality review sees of this detector."""
        return quality.Reviewer(list(self.names), self.info.name, self.review_shape, self.refine, self.side_pairs,
                                fine_reach_mm(self.config))

    def detect(self, volume: Volume, progress: Progress | None = None,
               cancelled: Callable[[], bool] | None = None) -> Landmarks:
        """Every landmark of the model's protocol, in LPS mm, with a confidence in [0, 1].

        Coarse pass around the head; a robust similarity fit of the protocol's reference
        configuration gives the head's pose; the coarse pass again and the fine passes then run in
        that canonical (upright) frame, and positions map back to the image (any pose, any storage order).
        Then ``quality.review``: implausible landmarks are searched again, the confidence is calibrated
        (sharpness, test-time agreement, plausibility) and ``needs_review`` / ``image_warning`` are set.
        """
        cfg = self.config
        steps = 3 + cfg.fine_iterations
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, steps)
            if cancelled and cancelled():
                raise Cancelled()

        source = prepare_source(volume, cfg, device=None)
        tick()
        pos, conf = self._coarse(source, source.center, None)
        rotation = np.eye(3)
        tick()
        canonical = self._canonical(pos)
        if canonical is not None:
            rotation, center = canonical
            pos, conf = self._coarse(source, center, rigid_about(rotation, center))
            refit = self._canonical(pos)
            if refit is not None:
                rotation = refit[0]
        pos, conf = fix_swapped_sides(pos, conf, rotation, self.side_pairs)
        tick()
        n = len(self.names)
        coarse_pos = pos.copy()
        pos, conf_fine = self.refine(source, pos, rotation, after_each=tick)
        pos, conf_fine = fix_swapped_sides(pos, conf_fine, rotation, self.side_pairs)
        result = DetectionState(source, coarse_pos, np.clip(conf, 0, 1), pos, np.clip(conf_fine, 0, 1), rotation)
        if not self.assess_quality:
            confidence = np.sqrt(result.coarse_confidence * result.fine_confidence)
            return Landmarks(list(self.names), pos, confidence=confidence, status=["predicted"] * n,
                             image=volume.path, model=self.info.name, placed_by=["model"] * n)
        reviewer = self.reviewer()
        landmarks = quality.review(reviewer, volume, result)
        self.last_assessment = reviewer.assessment
        return landmarks

    def refine(self, source: Source, positions: np.ndarray, rotation: np.ndarray | None = None,
               indices: Sequence[int] | None = None, iterations: int | None = None,
               after_each: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The fine stage from given positions (LPS mm): (positions, fine confidences).

        ``indices``: which landmark each row of ``positions`` is (default: all, in order); the
        patches are read in the canonical frame ``rotation`` (default: the image's own axes).
        """
        cfg = self.config
        pos = np.asarray(positions, float).reshape(-1, 3).copy()
        rows = np.arange(len(self.names)) if indices is None else np.asarray(indices, int).reshape(-1)
        if len(rows) != len(pos):
            raise ValueError("one position per landmark index")
        rotation = np.eye(3) if rotation is None else rotation
        conf = np.ones(len(pos))
        if not len(pos):
            return pos, conf
        for _ in range(cfg.fine_iterations if iterations is None else iterations):
            grids = fine_grids(cfg, pos)
            frames = [rigid_about(rotation, p) for p in pos]
            own = self.runner.run("fine", fine_input(source, grids, frames), channels=rows)  # patch k: its landmark
            idx, conf = decode_array(own, "softmax-centroid", cfg.decode_radius_fine)
            local = np.stack([g.index_to_physical(i) for g, i in zip(grids, idx, strict=True)])
            pos = np.stack([f[:3, :3] @ q + f[:3, 3] for f, q in zip(frames, local, strict=True)])
            if after_each:
                after_each()
        return pos, conf


def rigid_about(rotation: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4x4 physical transform rotating about ``center`` (maps a canonical-frame grid onto the image)."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(center, float) - rotation @ np.asarray(center, float)
    return m


def load_detector(model: str | os.PathLike | None = None, device: str = "auto", backend: str = "auto",
                  threads: int = 0):
    """The one loader for every kind of landmark checkpoint: ``Detector`` for two-stage models,
    ``single_stage.SingleStageDetector`` (torch) for single networks (e.g. ``--preset paper``)."""
    from .checkpoint import read_metadata

    path = resolve_model(model)
    if read_metadata(path).get("architecture", {}).get("name") == "two-stage":
        return Detector(path, device, backend, threads)
    from .single_stage import SingleStageDetector

    if str(backend).lower() == "onnx":
        raise DGLandmarkError("single-network models run on torch only (use --backend torch or auto)", path)
    return SingleStageDetector(path, device, threads)
