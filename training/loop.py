"""Generic single-network heatmap training (``pretrain`` and ``finetune --preset paper``).

Adam/AdamW with a step-wise learning-rate schedule, mixed precision on CUDA only, gradient
clipping, a resumable state every ``checkpoint_every`` steps (safetensors for tensors, JSON for
optimizer scalars and RNG states as lists: never pickle), the best checkpoint by validation MRE,
tqdm progress, ``metrics.csv`` (and TensorBoard when installed). Batches come from seeded RNGs
owned by the loop, so a resumed run takes the very steps an uninterrupted one would.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io.atomic import atomic_path, write_text_atomic
from napari_dglandmark.model.checkpoint import load_checkpoint, save_checkpoint
from napari_dglandmark.model.single_stage import SingleStageConfig, decode_to_physical

from . import ddp
from .config import TrainConfig
from .data import LandmarkCase, SegmentationCase
from .evaluate import position_errors, summarise
from .losses import logcosh, mixing_loss, mse
from .targets import boundary_distance_target, gaussian_heatmaps, mask_target, sobel_magnitude
from .warps import SpatialConfig, warp_items

RESUME_TENSORS = "resume.safetensors"
RESUME_JSON = "resume.json"
METRICS = "metrics.csv"
METRIC_FIELDS = ("step", "epoch", "loss", "lr", "val_mre_mm", "seconds")


# ------------------------------------------------------------------------------------------- tasks


class Task:
    """What the loop trains: global batches, a loss, an optional validation score (MRE mm, lower is better)."""

    def batch(self, rng: np.random.Generator, gen: torch.Generator, size: int, step: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, target: torch.Tensor, step: int) -> torch.Tensor:
        return mse(pred, target)

    def validate(self, network: nn.Module, device: torch.device) -> float | None:
        return None


def spatial_of(config: TrainConfig) -> SpatialConfig:
    """The single-network runs' spatial augmentation: rotation, uniform +-``rotation_deg`` about each grid axis."""
    return SpatialConfig(rotation_deg=(config.rotation_deg,) * 3)


class LandmarkTask(Task):
    """Paper fine-tuning: Gaussian heatmaps (sigma, peak) on the model grid, MSE, rotation, MRE validation.

    Each item is resampled on its own model grid through a ``training.warps`` draw of ``spatial``
    (default: ``spatial_of(config)``), drawn with the loop's numpy generator.
    """

    def __init__(self, train: Sequence[LandmarkCase], val: Sequence[LandmarkCase], config: TrainConfig,
                 spatial: SpatialConfig | None = None) -> None:
        if not train:
            raise DGLandmarkError("no training cases")
        self.train, self.val, self.config = list(train), list(val), config
        self.spatial = spatial or spatial_of(config)
        self.single = config.single_stage()

    def batch(self, rng, gen, size, step):
        picks = rng.integers(len(self.train), size=size)
        cases = [self.train[i] for i in picks]
        x, _, pts = warp_items([c.image for c in cases], [c.grid for c in cases], self.spatial, rng,
                               points_lps=[c.truth for c in cases])
        target = gaussian_heatmaps(pts, tuple(x.shape[2:]), self.config.sigma_vox, peak=self.config.peak)
        return x, target

    def validate(self, network, device):
        if not self.val:
            return None
        return validation_mre(network, self.val, self.single, device)


class PretrainTask(Task):
    """Pre-training on segmentations: boundary distance map | mask | Sobel input with mask target.
    Image and mask move together through one ``training.warps`` draw of ``spatial`` per item."""

    def __init__(self, cases: Sequence[SegmentationCase], config: TrainConfig,
                 spatial: SpatialConfig | None = None) -> None:
        if not cases:
            raise DGLandmarkError("no segmentation cases")
        self.cases, self.config = list(cases), config
        self.spatial = spatial or spatial_of(config)

    def batch(self, rng, gen, size, step):
        cfg = self.config
        picks = [self.cases[i] for i in rng.integers(len(self.cases), size=size)]
        x, m, _ = warp_items([c.image for c in picks], [c.grid for c in picks], self.spatial, rng,
                             masks=[c.mask for c in picks])
        if cfg.target == "boundary":
            target = boundary_distance_target(m, cfg.max_dist, scale=cfg.peak)
        else:
            target = mask_target(m, cfg.peak)
        if cfg.target == "edge":
            x = sobel_magnitude(x)
        return x, target

    def loss(self, pred, target, step):
        kind = self.config.loss
        if kind == "mse":
            return mse(pred, target)
        if kind == "logcosh":
            return logcosh(pred, target)
        return mixing_loss(pred, target, step // self.config.steps_per_epoch, self.config.total_epochs)


def validation_mre(network: nn.Module, cases: Sequence[LandmarkCase], single: SingleStageConfig,
                   device: torch.device) -> float:
    """Mean radial error (mm, physical space) of the paper's decoding over every landmark of ``cases``,
    under ``training.evaluate``'s failure policy (NaN when nothing was evaluated)."""
    errors = []
    with torch.no_grad():
        for case in cases:
            maps = network(case.image[None, None].to(device))[0]
            pos, _ = decode_to_physical(maps, case.grid, single)
            errors.append(position_errors(case.truth, pos))
    return summarise(np.concatenate(errors) if errors else np.zeros(0))["mre_mm"]


# ----------------------------------------------------------------------------------------- helpers


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up, then constant | cosine to 0 | x0.1 at 50 % and 75 %."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** int(step >= cfg.max_steps * 0.5)) * (0.1 ** int(step >= cfg.max_steps * 0.75))
    return cfg.lr


def build_optimizer(network: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict:
    np_global = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "torch_generator": gen.get_state().tolist(),
        "numpy_generator": rng.bit_generator.state,
        "numpy_global": [np_global[0], np_global[1].tolist(), *[v if not hasattr(v, "item") else v.item()
                                                                 for v in np_global[2:]]],
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict, rng: np.random.Generator, gen: torch.Generator) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    gen.set_state(torch.tensor(state["torch_generator"], dtype=torch.uint8))
    rng.bit_generator.state = state["numpy_generator"]
    g = state["numpy_global"]
    np.random.set_state((g[0], np.array(g[1], dtype=np.uint32), *g[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_resume_state(run_dir: Path, network: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, rng: np.random.Generator, gen: torch.Generator,
                      step: int, extra: dict) -> None:
    """``resume.safetensors`` (weights, optimizer tensors) + ``resume.json`` (scalars, RNG states), atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}
    sd = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    record = {"step": step, "optimizer": {"param_groups": sd["param_groups"], "scalars": scalars},
              "scaler": {k: (float(v) if isinstance(v, float) else v) for k, v in scaler.state_dict().items()},
              "rng": _rng_state(rng, gen), **extra}
    with atomic_path(run_dir / RESUME_TENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step)})
    write_text_atomic(run_dir / RESUME_JSON, json.dumps(record) + "\n")


def load_resume_state(run_dir: Path, network: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, rng: np.random.Generator, gen: torch.Generator) -> dict:
    """Restore what ``save_resume_state`` wrote; returns the JSON record (``step``, ...)."""
    tpath, jpath = run_dir / RESUME_TENSORS, run_dir / RESUME_JSON
    if not (tpath.is_file() and jpath.is_file()):
        raise DGLandmarkError("nothing to resume: no resume.safetensors / resume.json", run_dir)
    try:
        record = json.loads(jpath.read_text(encoding="utf-8"))
        with safe_open(str(tpath), framework="pt", device="cpu") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            step = int((handle.metadata() or {}).get("step", -1))
    except (OSError, ValueError) as exc:
        raise DGLandmarkError(f"cannot read the resume state ({exc})", run_dir) from None
    if step != record["step"]:
        raise DGLandmarkError("resume.safetensors and resume.json are from different steps", run_dir)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        network.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise DGLandmarkError(f"resume state does not fit this network ({str(exc).splitlines()[0]})", run_dir) from None
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in record["optimizer"]["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": record["optimizer"]["param_groups"]})
    if record.get("scaler"):
        scaler.load_state_dict(record["scaler"])
    _set_rng_state(record["rng"], rng, gen)
    return record


class MetricsLog:
    """``metrics.csv`` rewritten atomically at each row (cut back to the resumed step on resume)."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / METRICS
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def add(self, row: dict) -> None:
        self.rows.append({k: row.get(k, "") for k in METRIC_FIELDS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())
        if self.tb is not None:
            for key in ("loss", "lr", "val_mre_mm"):
                if row.get(key) not in (None, ""):
                    self.tb.add_scalar(key, float(row[key]), int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    best_mre_mm: float | None
    best_step: int | None
    checkpoint: Path | None
    network: nn.Module  # the last weights (not the best)


def init_from_checkpoint(network: nn.Module, path: str | Path) -> tuple[int, int]:
    """Copy every tensor of a checkpoint whose name and shape match (a new head for another landmark count).

    Returns (copied, total in ``network``); copying nothing is an error.
    """
    source, _ = load_checkpoint(path)
    if source.__class__.__name__ == "TwoStageDetector" and network.__class__.__name__ != "TwoStageDetector":
        source = source.coarse
    src = source.state_dict()
    own = network.state_dict()
    matched = {k: v for k, v in src.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matched:
        raise DGLandmarkError("no weight of this checkpoint fits the network (another architecture?)", path)
    own.update(matched)
    network.load_state_dict(own)
    return len(matched), len(own)


# -------------------------------------------------------------------------------------------- loop


def train(network: nn.Module, task: Task, cfg: TrainConfig, run_dir: str | Path, device: torch.device,
          metadata: dict | None = None, resume: bool = False, info: ddp.DistInfo | None = None,
          stop_after: int | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
          on_row: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None
          ) -> TrainResult:
    """Train ``network`` on ``task`` for ``cfg.max_steps`` steps (``stop_after``: quit early, as if killed).

    ``should_stop()`` is asked before every step (a time budget, early stopping, a cancel button);
    when it says True the run ends there like ``stop_after``: the resume state is saved, no final
    checkpoint is written and the network keeps its last weights.

    Writes into ``run_dir``: resume state, ``metrics.csv``, ``best.safetensors`` (by validation
    MRE) and, when the run completes, ``model.safetensors`` (the best, else the last weights).
    The caller seeds torch before building ``network`` (see ``seed_everything``). ``on_row``
    receives every metrics row (step, loss, lr, seconds, val_mre_mm) as it is logged.
    """
    from tqdm.auto import tqdm

    run = Path(run_dir)
    info = info or ddp.DistInfo()
    main = info.is_main
    run.mkdir(parents=True, exist_ok=True)
    log = log or (lambda text: None)
    meta = dict(metadata or {})
    network = network.to(device)
    optimizer = build_optimizer(network, cfg)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, best, best_step = 0, math.inf, None
    if resume:
        record = load_resume_state(run, network, optimizer, scaler, rng, gen)
        start, best_step = int(record["step"]), record.get("best_step")
        best = math.inf if record.get("best_mre_mm") is None else float(record["best_mre_mm"])
        if main:
            log(f"resumed at step {start}")
    metrics = MetricsLog(run, start if resume else None) if main else None
    model = ddp.wrap(network, info, device)
    local = ddp.local_slice(cfg.batch_size, info)
    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not (progress and main), desc="train", unit="step")
    t0, running, loss_value = time.time(), [], math.nan

    def save_state(done: int) -> None:
        if main:
            save_resume_state(run, network, optimizer, scaler, rng, gen, done,
                              {"best_mre_mm": None if best == math.inf else best, "best_step": best_step,
                               "max_steps": cfg.max_steps})

    model.train()
    for step in range(start, end):
        if should_stop is not None and ddp.broadcast_float(float(bool(should_stop())), info, device) > 0.5:
            end = step
            save_state(step)
            break
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, target = task.batch(rng, gen, cfg.batch_size, step)
        x, target = x[local].to(device), target[local].to(device)
        with torch.autocast(device.type, enabled=use_amp):
            pred = model(x)
        loss = task.loss(pred.float(), target, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(network.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        running.append(float(loss.detach()))
        done = step + 1
        bar.update(1)
        row = None
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            loss_value = float(np.mean(running))
            if info.enabled:  # the mean over ranks, for the log only
                t = torch.tensor([loss_value], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(t)
                loss_value = float(t.item()) / info.world_size
            running = []
            row = {"step": done, "epoch": step // cfg.steps_per_epoch, "loss": f"{loss_value:.6g}",
                   "lr": f"{lr:.6g}", "seconds": round(time.time() - t0, 1)}
            bar.set_postfix(loss=f"{loss_value:.4g}")
        if done % cfg.val_every == 0 or done == cfg.max_steps:
            mre = None
            if main:
                network.eval()
                mre = task.validate(network, device)
                network.train()
            mre = ddp.broadcast_float(math.nan if mre is None else mre, info, device)
            if not math.isnan(mre):
                row = row or {"step": done, "epoch": step // cfg.steps_per_epoch, "lr": f"{lr:.6g}",
                              "seconds": round(time.time() - t0, 1)}
                row["val_mre_mm"] = f"{mre:.4f}"
                if mre < best:
                    best, best_step = mre, done
                    if main:
                        save_checkpoint(run / "best.safetensors", network,
                                        dict(meta, training=dict(meta.get("training", {}), step=done, val_mre_mm=mre)))
        if row and main:
            metrics.add(row)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            if on_row is not None:
                on_row(row)
        if done % cfg.checkpoint_every == 0 or done == end:
            save_state(done)
            ddp.barrier(info)
    bar.close()
    if metrics is not None:
        metrics.close()
    finished = end >= cfg.max_steps
    checkpoint = None
    if finished and main:
        checkpoint = run / "model.safetensors"
        final = network
        training = dict(meta.get("training", {}), steps=cfg.max_steps, selected_step=cfg.max_steps)
        if best_step is not None and (run / "best.safetensors").is_file():
            final = copy.deepcopy(network)
            init_from_checkpoint(final, run / "best.safetensors")
            training.update(selected_step=best_step, val_mre_mm=best)
        save_checkpoint(checkpoint, final, dict(meta, training=training))
        log(f"wrote {checkpoint}")
    ddp.barrier(info)
    return TrainResult(end, loss_value, None if best == math.inf else best, best_step, checkpoint, network)
