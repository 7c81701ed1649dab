"""Scale-out with PyTorch DDP: ``torchrun --nproc_per_node N -m training.cli finetune ...``.

NCCL on GPUs, gloo on CPU. Every rank draws the same *global* batch from the same seeded RNG and
trains on its own slice, so N ranks with batch B/N each follow the same path as one process with
batch B (DDP averages the gradients; the loss is a mean over equal slices). Only rank 0 writes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from napari_dglandmark.errors import DGLandmarkError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    """Rank and world size as ``torchrun`` sets them (one process when unset)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device, info: DistInfo | None = None, init_method: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group when there is more than one rank; returns (info, this rank's device)."""
    info = info or from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"init_method": init_method} if init_method else {}
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(minutes=30), **kwargs)
    return info, device


def wrap(network: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``network`` when distributed, else the network itself."""
    if not info.enabled:
        return network
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=ids)


def local_slice(batch_size: int, info: DistInfo) -> slice:
    """This rank's part of a global batch (the global batch must split evenly)."""
    if batch_size % info.world_size:
        raise DGLandmarkError(f"batch_size {batch_size} does not split over {info.world_size} processes")
    per = batch_size // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value on every rank (e.g. a validation score, so all ranks decide alike)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
