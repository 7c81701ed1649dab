"""The one inference path: volume + model -> named landmarks with positions and confidences.

The CLI, the napari widget and ``dglandmark-train evaluate`` all call ``Detector.detect``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DGLandmarkError
from ..io.landmarks import Landmarks
from ..io.volume import Volume
from .checkpoint import file_sha256, load_checkpoint
from .decode import decode
from .devices import is_out_of_memory, resolve_device
from .pipeline import PipelineConfig, coarse_grid, coarse_input, fine_grids, fine_input, prepare_source
from .shape import ShapeModel, load_shape_model

if TYPE_CHECKING:
    from .pipeline import Source

Progress = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised inside ``detect`` when the caller's ``cancelled()`` returns True."""


@dataclass
class ModelInfo:
    path: str
    name: str
    protocol: str
    landmark_names: list[str]
    sha256: str
    metadata: dict


def bundled_models_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "models"


def bundled_models() -> dict[str, Path]:
    """Bundled model name -> .safetensors path."""
    return {p.name[: -len(".safetensors")]: p for p in sorted(bundled_models_dir().glob("*.safetensors"))}


DEFAULT_MODEL = "afids32"


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A bundled model by name, or a checkpoint path."""
    key = str(name_or_path or DEFAULT_MODEL)
    models = bundled_models()
    if key in models:
        return models[key]
    path = Path(key)
    if path.exists():
        return path
    known = ", ".join(models) or "none"
    raise DGLandmarkError(f"no bundled model or file named {key!r} (bundled: {known})")


def load_model(model: str | os.PathLike | None, two_stage: bool) -> tuple[torch.nn.Module, ModelInfo]:
    """Load a landmark checkpoint (CPU) and describe it; refuses the wrong kind of network."""
    path = resolve_model(model)
    network, meta = load_checkpoint(path, device="cpu")
    if (network.__class__.__name__ == "TwoStageDetector") != two_stage:
        what = ("is not a detection model (expected a two-stage landmark detector)" if two_stage
                else "is a two-stage model; use inference.Detector")
        raise DGLandmarkError(what, path)
    if not meta.get("landmark_names"):
        raise DGLandmarkError("checkpoint metadata lists no landmark names", path)
    info = ModelInfo(str(path), meta.get("model_name", path.name[: -len(".safetensors")]),
                     meta.get("protocol", ""), list(meta["landmark_names"]), file_sha256(path), meta)
    return network, info


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
    """A loaded model, reused across images."""

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto") -> None:
        network, self.info = load_model(model, two_stage=True)
        self.device = resolve_device(device)
        self.network = network.to(self.device)
        self.config = PipelineConfig.from_dict(self.info.metadata.get("pipeline", {}))
        self.bilateral_pairs = [tuple(p) for p in self.info.metadata.get("bilateral_pairs", [])]
        self.shape = reference_shape(self.info)
        self.assess_quality = True  # plausibility, review flags and the image warning (``model.quality``)
        self.last_assessment = None  # the last detection's ``quality.Assessment`` (benchmarks, debugging)

    @property
    def names(self) -> list[str]:
        return self.info.landmark_names

    def _run(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Forward pass with mixed precision on CUDA and a CPU fallback on out-of-memory."""
        try:
            with torch.inference_mode():
                if self.device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.float16):
                        return net(x.to(self.device)).float()
                return net(x.to(self.device))
        except (RuntimeError, MemoryError) as exc:
            if self.device.type == "cpu" or not is_out_of_memory(exc):
                raise
            warnings.warn(f"{self.device.type} ran out of memory; falling back to the CPU", stacklevel=2)
            self.device = torch.device("cpu")
            self.network.to(self.device)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return self._run(net, x)

    def _fix_swapped_sides(self, pos: np.ndarray, conf: np.ndarray, rotation: np.ndarray) -> None:
        """Bilateral pairs keep their sides: in the head's own frame an R landmark lies at smaller
        LPS x than its L twin (``rotation``: head frame -> image, from the canonical fit)."""
        x = pos @ rotation  # rows: positions in the head frame (R^T p)
        for right, left in self.bilateral_pairs:
            try:
                r, lft = self.names.index(right), self.names.index(left)
            except ValueError:
                continue
            if x[r, 0] > x[lft, 0]:
                pos[[r, lft]] = pos[[lft, r]]
                x[[r, lft]] = x[[lft, r]]
                conf[[r, lft]] = np.minimum(conf[r], conf[lft]) * 0.5

    def _coarse(self, source, center: np.ndarray, frame: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Coarse positions (LPS) and confidences on a grid around ``center``, seen through ``frame``."""
        grid = coarse_grid(self.config, center)
        logits = self._run(self.network.coarse, coarse_input(source, grid, [frame]))[0]
        index, conf = decode(logits.cpu(), "softmax-centroid", self.config.decode_radius_coarse)
        pos = grid.index_to_physical(index.double().numpy())
        if frame is not None:
            pos = pos @ frame[:3, :3].T + frame[:3, 3]
        return pos, conf.numpy().astype(float)

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

        source = prepare_source(volume, cfg, device="cpu")
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
        self._fix_swapped_sides(pos, conf, rotation)
        tick()
        n = len(self.names)
        coarse_pos = pos.copy()
        pos, conf_fine = self.refine(source, pos, rotation, after_each=tick)
        self._fix_swapped_sides(pos, conf_fine, rotation)
        result = DetectionState(source, coarse_pos, np.clip(conf, 0, 1), pos, np.clip(conf_fine, 0, 1), rotation)
        if not self.assess_quality:
            confidence = np.sqrt(result.coarse_confidence * result.fine_confidence)
            return Landmarks(list(self.names), pos, confidence=confidence, status=["predicted"] * n,
                             image=volume.path, model=self.info.name, placed_by=["model"] * n)
        from .quality import review

        return review(self, volume, result)

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
            out = self._run(self.network.fine, fine_input(source, grids, frames)).cpu()
            own = out[torch.arange(len(rows)), torch.as_tensor(rows)]  # patch k is read on its landmark's channel
            idx, c = decode(own, "softmax-centroid", cfg.decode_radius_fine)
            local = np.stack([g.index_to_physical(i) for g, i in zip(grids, idx.double().numpy(), strict=True)])
            pos = np.stack([f[:3, :3] @ q + f[:3, 3] for f, q in zip(frames, local, strict=True)])
            conf = c.numpy().astype(float)
            if after_each:
                after_each()
        return pos, conf


@dataclass
class DetectionState:
    """What ``Detector.detect`` knows before the quality review (positions LPS mm)."""

    source: Source
    coarse_positions: np.ndarray
    coarse_confidence: np.ndarray
    positions: np.ndarray
    fine_confidence: np.ndarray
    rotation: np.ndarray  # head frame -> image (identity without a canonical frame)


def rigid_about(rotation: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4x4 physical transform rotating about ``center`` (maps a canonical-frame grid onto the image)."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(center, float) - rotation @ np.asarray(center, float)
    return m


def load_detector(model: str | os.PathLike | None = None, device: str = "auto"):
    """The one loader for every kind of landmark checkpoint: ``Detector`` for two-stage models,
    ``single_stage.SingleStageDetector`` for single networks (e.g. ``--preset paper``)."""
    from .checkpoint import read_metadata
    from .single_stage import SingleStageDetector

    path = resolve_model(model)
    if read_metadata(path).get("architecture", {}).get("name") == "two-stage":
        return Detector(path, device)
    return SingleStageDetector(path, device)
