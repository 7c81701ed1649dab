"""Training settings: presets (``paper`` | ``default``), a TOML/JSON file, command-line overrides, in that order."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.model.single_stage import SingleStageConfig

PRESETS = ("paper", "default")


@dataclass
class TrainConfig:
    """Everything a single-network run (``loop.py``) needs; saved as the run's ``config.json``."""

    preset: str = "default"
    # network
    arch: str = "resunet3d"
    base_width: int = 32
    depth: int = 3
    blocks_per_stage: int = 3
    norm: str = "instance"
    out_channels: int | None = None  # pretrain only; default: the protocol's landmark count, else 1
    # input grid and targets (the paper: 5-95 % window, 128^3 anisotropic resize, sigma 5, peak 255)
    grid_size: tuple[int, int, int] = (128, 128, 128)
    window_low: float = 5.0
    window_high: float = 95.0
    sigma_vox: float = 5.0
    peak: float = 255.0
    decode: str = "argmax"
    rotation_deg: float = 5.0
    # optimisation
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | step
    warmup_steps: int = 0
    batch_size: int = 4
    max_steps: int = 2000
    steps_per_epoch: int = 50  # an "epoch" is a fixed number of steps (mixing loss, step schedule)
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    amp: bool = True  # mixed precision; only ever used on CUDA
    # bookkeeping
    checkpoint_every: int = 100
    val_every: int = 100
    log_every: int = 10
    val_fraction: float = 0.2
    seed: int = 0
    cache_dir: str | None = None
    # pre-training
    target: str = "boundary"  # boundary | mask | edge
    loss: str = "mix"  # mse | logcosh | mix
    max_dist: float = 5.0  # voxels of the model grid
    labels: str = ">0"
    # two-stage recipe overrides (finetune --preset default): keys of training.detector.DetectorRecipe
    detector: dict = field(default_factory=dict)

    def single_stage(self) -> SingleStageConfig:
        return SingleStageConfig(grid_size=tuple(self.grid_size), window_low=self.window_low,
                                 window_high=self.window_high, decode=self.decode, peak=self.peak)

    def network_hparams(self) -> dict[str, Any]:
        if self.arch == "resunet3d":
            return dict(base_width=self.base_width, depth=self.depth, blocks_per_stage=self.blocks_per_stage,
                        norm=self.norm)
        if self.arch == "vitpose3d":
            return dict(img_size=list(self.grid_size[::-1]), norm=self.norm)
        raise DGLandmarkError(f"unknown arch {self.arch!r}; use resunet3d or vitpose3d")

    @property
    def total_epochs(self) -> int:
        return max(1, -(-self.max_steps // self.steps_per_epoch))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid_size"] = list(self.grid_size)
        return d

    def updated(self, changes: dict[str, Any], source: str | os.PathLike | None = None) -> TrainConfig:
        """A copy with ``changes`` applied; unknown keys and wrong types are user errors."""
        known = {f.name: f for f in fields(self)}
        data = asdict(self)
        for key, value in changes.items():
            name = key.replace("-", "_")
            if name not in known:
                raise DGLandmarkError(f"unknown setting {key!r} (known: {', '.join(sorted(known))})", source)
            data[name] = _coerce(name, value, data[name], source)
        out = TrainConfig(**data)
        out.check(source)
        return out

    def check(self, source: str | os.PathLike | None = None) -> None:
        choices = {"preset": PRESETS, "optimizer": ("adam", "adamw"), "schedule": ("constant", "cosine", "step"),
                   "target": ("boundary", "mask", "edge"), "loss": ("mse", "logcosh", "mix"),
                   "decode": ("argmax", "centroid", "softmax-centroid")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DGLandmarkError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}", source)
        if len(self.grid_size) != 3 or min(self.grid_size) < 8:
            raise DGLandmarkError("grid_size needs 3 values of at least 8", source)
        for name in ("batch_size", "max_steps", "steps_per_epoch", "checkpoint_every", "val_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise DGLandmarkError(f"{name} must be at least 1", source)


def _coerce(name: str, value: Any, current: Any, source) -> Any:
    if name == "grid_size":
        vals = [value] * 3 if isinstance(value, int) else list(value)
        return tuple(int(v) for v in vals)
    if name == "labels":
        return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if current is None or value is None or isinstance(current, dict):
        return value
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        return type(current)(value)
    except (TypeError, ValueError):
        raise DGLandmarkError(f"setting {name!r} needs a {type(current).__name__}, got {value!r}", source) from None


def preset(name: str) -> TrainConfig:
    """The settings of a preset. ``paper``: the published recipe; ``default``: ours (AdamW, cosine, clipping)."""
    if name not in PRESETS:
        raise DGLandmarkError(f"unknown preset {name!r}; use {' or '.join(PRESETS)}")
    cfg = TrainConfig(preset=name)
    if name == "paper":
        return cfg
    # Our single-network settings: a smaller, faster network; the finetune default is the two-stage recipe.
    return cfg.updated(dict(base_width=16, blocks_per_stage=1, optimizer="adamw", weight_decay=1e-4,
                            schedule="cosine", warmup_steps=50, grad_clip=5.0, decode="centroid",
                            sigma_vox=3.0, peak=100.0, grid_size=(96, 96, 96)))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a TOML (``.toml``) or JSON file, as a flat dict (a ``[train]`` table is flattened)."""
    src = Path(path)
    if not src.is_file():
        raise DGLandmarkError("config file not found", src)
    text = src.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if src.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DGLandmarkError(f"malformed config: {exc}", src) from None
    if not isinstance(data, dict):
        raise DGLandmarkError("config must be a table / JSON object", src)
    if isinstance(data.get("train"), dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    return data


def build_config(preset_name: str, command: str, file: str | os.PathLike | None,
                 overrides: dict[str, Any]) -> TrainConfig:
    """Preset, then the config file, then the command line (``None`` values are not given).
    ``command`` names the sub-command for the callers' sake; every command starts from the same preset."""
    cfg = preset(preset_name)
    if file:
        data = read_config_file(file)
        data.pop("preset", None)  # the preset is chosen on the command line
        cfg = cfg.updated(data, file)
    return cfg.updated({k: v for k, v in overrides.items() if v is not None})
