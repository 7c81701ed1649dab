"""The paper's single-network path: percentile window, anisotropic resize to a fixed grid, heatmaps, decode.

Shared by ``dglandmark-train`` (training inputs, validation) and evaluation of single-network
checkpoints, so both read a volume the same way. Two-stage models use ``inference.Detector``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..io.geometry import Geometry, Volume
from ..io.landmarks import Landmarks
from .checkpoint import load_checkpoint
from .decode import decode
from .devices import resolve_device
from .preprocess import check_voxels, normalise
from .registry import model_info
from .resample import resample


@dataclass
class SingleStageConfig:
    """How a single-network model reads a volume; stored as ``single_stage`` in its metadata."""

    grid_size: tuple[int, int, int] = (128, 128, 128)  # x, y, z voxels (the whole field of view)
    window_low: float = 5.0  # intensity percentiles mapped to 0 and 1
    window_high: float = 95.0
    decode: str = "argmax"  # decode.decode method
    decode_radius: int = 2
    peak: float = 255.0  # target heatmap height (confidence scale for argmax / centroid)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SingleStageConfig:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        if "grid_size" in known:
            known["grid_size"] = tuple(int(v) for v in known["grid_size"])
        return cls(**known)

    @property
    def normalisation(self) -> dict:
        return {"kind": "percentile", "low": float(self.window_low), "high": float(self.window_high)}


def model_grid(geometry: Geometry, size_xyz: tuple[int, int, int]) -> Geometry:
    """The grid of ``size_xyz`` voxels covering the same field of view (voxel edges meet): an anisotropic resize."""
    size = np.asarray(size_xyz, dtype=float)
    old = np.asarray(geometry.size, dtype=float)
    factor = old / size
    first = (factor - 1.0) / 2.0  # centre of the new first voxel, in old voxel indices
    origin = geometry.index_to_physical(first)
    return Geometry(shape=tuple(int(n) for n in size_xyz[::-1]),
                    spacing=tuple(float(s) for s in np.asarray(geometry.spacing) * factor),
                    origin=tuple(float(o) for o in origin), direction=geometry.direction)


def prepare_input(volume: Volume, config: SingleStageConfig) -> tuple[torch.Tensor, Geometry]:
    """Window, scale to [0, 1] and resize a volume onto its model grid: ([D, H, W] float32, grid)."""
    check_voxels(volume)
    image = normalise(volume.array, config.normalisation)
    grid = model_grid(volume.geometry, config.grid_size)
    return resample(image, volume.geometry, grid)[0, 0], grid


def decode_to_physical(maps: torch.Tensor, grid: Geometry, config: SingleStageConfig) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps [L, D, H, W] on ``grid`` -> (LPS mm [L, 3], confidence [L])."""
    index, conf = decode(maps.float().cpu(), config.decode, config.decode_radius, expected_peak=config.peak)
    return grid.index_to_physical(index.double().numpy()), conf.numpy().astype(float)


class SingleStageDetector:
    """A loaded single-network checkpoint (e.g. from ``dglandmark-train finetune --preset paper``)."""

    def __init__(self, model: str | os.PathLike, device: str = "auto", threads: int = 0) -> None:
        self.info = model_info(model, two_stage=False)
        network, _ = load_checkpoint(self.info.path)
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.config = SingleStageConfig.from_dict(self.info.metadata.get("single_stage", {}))

    @property
    def names(self) -> list[str]:
        return self.info.landmark_names

    def detect(self, volume: Volume, progress: Callable[[int, int], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> Landmarks:
        """Every landmark of the model, in LPS mm, with a confidence in [0, 1]."""
        x, grid = prepare_input(volume, self.config)
        with torch.no_grad():
            maps = self.network(x[None, None].to(self.device))[0]
        pos, conf = decode_to_physical(maps, grid, self.config)
        if progress:
            progress(1, 1)
        n = len(self.names)
        return Landmarks(list(self.names), pos, confidence=conf, status=["predicted"] * n,
                         image=volume.path, model=self.info.name)
