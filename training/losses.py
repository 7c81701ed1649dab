"""Regression losses for heatmap / boundary-map training. All reduce to a scalar mean.

``pred`` and ``target`` broadcast (the paper compares a one-channel pre-training target with
every output channel: pred [B, L, ...] against target [B, 1, ...]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)
LOGCOSH_LINEAR_FROM = 10.0  # |r| >= 10: log(cosh(r)) = |r| - log 2 to float precision, and cosh would overflow


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return (pred - target).pow(2).mean()


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return (pred - target).abs().mean()


def huber(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Huber: r^2 / 2 for |r| <= delta, delta * (|r| - delta / 2) beyond; mean."""
    pred, target = torch.broadcast_tensors(pred, target)
    return F.huber_loss(pred, target, delta=delta)


def logcosh(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean log(cosh(r)), with |r| - log 2 where |r| >= 10 (as in the paper's code; no overflow, finite grads)."""
    r = pred - target
    a = r.abs()
    # clamp before cosh so the unused branch is finite too (else its NaN gradient leaks through where)
    small = torch.log(torch.cosh(a.clamp(max=LOGCOSH_LINEAR_FROM)))
    return torch.where(a >= LOGCOSH_LINEAR_FROM, a - LOG2, small).mean()


def mixing_weight(epoch: int, total_epochs: int) -> float:
    """t = (epoch + 1) / (total_epochs + 1): weight of MSE in the mixing loss (epoch counts from 0)."""
    return (epoch + 1) / (total_epochs + 1)


def mixing_loss(pred: torch.Tensor, target: torch.Tensor, epoch: int, total_epochs: int) -> torch.Tensor:
    """BaPDG robust loss: t * MSE + (1 - t) * logcosh, moving from log-cosh to MSE over training."""
    t = mixing_weight(epoch, total_epochs)
    return t * mse(pred, target) + (1.0 - t) * logcosh(pred, target)


def foreground_weighted_mse(
    pred: torch.Tensor, target: torch.Tensor, fg_weight: float = 10.0, threshold: float = 0.0
) -> torch.Tensor:
    """MSE with voxels where ``target > threshold`` weighted ``fg_weight`` (others 1), normalised by the weight sum.

    Counters the collapse to all-zero output when almost every voxel is background (PROBES.md, 1).
    With our box-truncated Gaussians, the default threshold 0 means "inside a landmark's window".
    """
    pred, target = torch.broadcast_tensors(pred, target)
    weight = torch.where(target > threshold, torch.full_like(target, fg_weight), torch.ones_like(target))
    return (weight * (pred - target).pow(2)).sum() / weight.sum()


LossFn = Callable[..., torch.Tensor]

LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "l1": l1,
    "huber": huber,
    "logcosh": logcosh,
    "mixing": mixing_loss,
    "foreground_weighted_mse": foreground_weighted_mse,
    "fg_mse": foreground_weighted_mse,
}


def build_loss(name: str, **kw) -> LossFn:
    """The loss called ``name`` with its options bound (e.g. ``build_loss("huber", delta=5.0)``).

    The result is called ``loss(pred, target)``; "mixing" also takes ``epoch=, total_epochs=``.
    """
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    return partial(LOSSES[key], **kw) if kw else LOSSES[key]


__all__ = [
    "LOSSES",
    "build_loss",
    "foreground_weighted_mse",
    "huber",
    "l1",
    "logcosh",
    "mixing_loss",
    "mixing_weight",
    "mse",
]
