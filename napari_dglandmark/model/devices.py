"""Choosing the torch device: ``auto`` = CUDA, then Apple MPS, then CPU (the torch backend and training).

The choices themselves live in the torch-free ``model.registry``.
"""

from __future__ import annotations

import torch

from ..errors import DGLandmarkError
from .registry import DEVICE_CHOICES

__all__ = ["DEVICE_CHOICES", "is_out_of_memory", "resolve_device"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for a user's choice; asking for an absent accelerator is a clear error."""
    if isinstance(name, torch.device):
        return name
    choice = str(name).lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise DGLandmarkError("CUDA was requested but no CUDA device is available (use --device cpu or auto)")
    if choice == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DGLandmarkError("MPS was requested but Apple's Metal backend is not available")
    if choice not in DEVICE_CHOICES and not choice.startswith("cuda:"):
        raise DGLandmarkError(f"unknown device {name!r}; use one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(choice)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA/MPS out-of-memory error (which we answer by falling back to the CPU)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return (oom and isinstance(exc, oom)) or "out of memory" in str(exc).lower()
