"""The one inference path: volume + model -> named landmarks with positions and confidences.

The CLI, the napari widget and ``dglandmark-train evaluate`` all call ``Detector.detect``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DGLandmarkError
from ..io.landmarks import Landmarks
from ..io.volume import Volume
from .checkpoint import file_sha256, load_checkpoint
from .decode import decode
from .devices import is_out_of_memory, resolve_device
from .pipeline import PipelineConfig, coarse_grid, coarse_input, fine_grids, fine_input, prepare_source

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


class Detector:
    """A loaded model, reused across images."""

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto") -> None:
        network, self.info = load_model(model, two_stage=True)
        self.device = resolve_device(device)
        self.network = network.to(self.device)
        self.config = PipelineConfig.from_dict(self.info.metadata.get("pipeline", {}))
        self.bilateral_pairs = [tuple(p) for p in self.info.metadata.get("bilateral_pairs", [])]

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

    def _fix_swapped_sides(self, pos: np.ndarray, conf: np.ndarray) -> None:
        """Bilateral pairs must keep their sides: an R landmark lies at smaller LPS x than its L twin."""
        for right, left in self.bilateral_pairs:
            try:
                r, lft = self.names.index(right), self.names.index(left)
            except ValueError:
                continue
            if pos[r, 0] > pos[lft, 0]:
                pos[[r, lft]] = pos[[lft, r]]
                conf[[r, lft]] = np.minimum(conf[r], conf[lft]) * 0.5

    def detect(self, volume: Volume, progress: Progress | None = None,
               cancelled: Callable[[], bool] | None = None) -> Landmarks:
        """Every landmark of the model's protocol, in LPS mm, with a confidence in [0, 1]."""
        cfg = self.config
        steps = 2 + cfg.fine_iterations
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, steps)
            if cancelled and cancelled():
                raise Cancelled()

        net = self.network
        source = prepare_source(volume, cfg, device="cpu")
        tick()
        grid = coarse_grid(cfg, source.center)
        logits = self._run(net.coarse, coarse_input(source, grid))[0]
        index, conf_coarse = decode(logits.cpu(), "softmax-centroid", cfg.decode_radius_coarse)
        pos = grid.index_to_physical(index.double().numpy())
        conf = conf_coarse.numpy().astype(float)
        self._fix_swapped_sides(pos, conf)
        tick()
        n = len(self.names)
        conf_fine = np.ones(n)
        for _ in range(cfg.fine_iterations):
            grids = fine_grids(cfg, pos)
            out = self._run(net.fine, fine_input(source, grids)).cpu()
            own = out[torch.arange(n), torch.arange(n)]  # patch k is read on channel k only
            idx, c = decode(own, "softmax-centroid", cfg.decode_radius_fine)
            pos = np.stack([g.index_to_physical(i) for g, i in zip(grids, idx.double().numpy(), strict=True)])
            conf_fine = c.numpy().astype(float)
            tick()
        self._fix_swapped_sides(pos, conf_fine)
        confidence = np.sqrt(np.clip(conf, 0, 1) * np.clip(conf_fine, 0, 1))
        return Landmarks(list(self.names), pos, confidence=confidence, status=["predicted"] * n,
                         image=volume.path, model=self.info.name)
