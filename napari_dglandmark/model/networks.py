"""The paper's two heatmap networks (3D residual U-Net, 3D ViTPose) and a registry to rebuild them by name."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DGLandmarkError

_NORMS = ("instance", "batch", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    """A 3D normalisation layer of the given kind."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    # Largest divisor of `channels` not above 8: group norm must split channels evenly.
    groups = max(g for g in range(1, 9) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _check_norm(norm: str) -> str:
    if norm not in _NORMS:
        raise DGLandmarkError(f"unknown norm {norm!r}; choose one of {', '.join(_NORMS)}")
    return norm


def _conv_block(cin: int, cout: int, norm: str, stride: int = 1) -> nn.Sequential:
    """3x3x3 conv, norm, ReLU."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        _norm(norm, cout),
        nn.ReLU(inplace=True),
    )


class ResBlock3D(nn.Module):
    """Pre-addition residual block: two 3x3x3 convs, with a 1x1x1 projection when shape changes."""

    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, cout)
        self.skip: nn.Module
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout))
        else:
            self.skip = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.skip(x))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resize to an exact spatial size (size-aware, so odd input sizes round-trip)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


class ResUNet3D(nn.Module):
    """3D residual U-Net: strided double-conv stem, `depth` strided residual stages, trilinear decoder with skips.

    Output has `out_channels` heatmaps at the input's spatial size, for any input size.
    """

    name = "resunet3d"

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 32,
        base_width: int = 32,
        depth: int = 3,
        norm: str = "instance",
        blocks_per_stage: int = 3,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if depth < 1 or base_width < 1 or blocks_per_stage < 1:
            raise DGLandmarkError("depth, base_width and blocks_per_stage must be >= 1")
        self.hparams: dict[str, Any] = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "base_width": int(base_width),
            "depth": int(depth),
            "norm": norm,
            "blocks_per_stage": int(blocks_per_stage),
        }
        widths = [base_width * 2**s for s in range(depth + 1)]
        # Stem works at half resolution: the paper's stride-2 double conv keeps 128^3 inputs affordable.
        self.stem = nn.Sequential(
            _conv_block(in_channels, widths[0], norm, stride=2), _conv_block(widths[0], widths[0], norm)
        )
        self.stages = nn.ModuleList()
        for s in range(1, depth + 1):
            blocks = [ResBlock3D(widths[s - 1], widths[s], norm, stride=2)]
            blocks += [ResBlock3D(widths[s], widths[s], norm) for _ in range(blocks_per_stage - 1)]
            self.stages.append(nn.Sequential(*blocks))
        self.decoders = nn.ModuleList()
        for s in range(depth, 0, -1):
            self.decoders.append(ResBlock3D(widths[s] + widths[s - 1], widths[s - 1], norm))
        self.refine = _conv_block(widths[0] + in_channels, widths[0], norm)
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        skips = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for decoder in self.decoders:
            skip = skips.pop()
            y = decoder(torch.cat([_resize(y, skip.shape[2:]), skip], dim=1))
        # Full-resolution refinement sees the raw input, so sub-stem detail is not lost entirely.
        y = self.refine(torch.cat([_resize(y, size), x], dim=1))
        return self.head(y)


class ViTPose3D(nn.Module):
    """3D ViTPose: a ViT encoder over cubic patches and a small conv upsampling decoder to input size."""

    name = "vitpose3d"

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 32,
        img_size: Sequence[int] | int = (128, 128, 128),
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 8,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        decoder_width: int = 128,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        _check_norm(norm)
        size = [int(img_size)] * 3 if isinstance(img_size, int) else [int(s) for s in img_size]
        if len(size) != 3 or embed_dim % heads != 0:
            raise DGLandmarkError("img_size needs 3 values and embed_dim must be divisible by heads")
        self.hparams: dict[str, Any] = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "img_size": size,
            "patch_size": int(patch_size),
            "embed_dim": int(embed_dim),
            "depth": int(depth),
            "heads": int(heads),
            "mlp_ratio": float(mlp_ratio),
            "decoder_width": int(decoder_width),
            "norm": norm,
        }
        self.patch_size = int(patch_size)
        grid = [math.ceil(s / patch_size) for s in size]
        self.patch_embed = nn.Conv3d(in_channels, embed_dim, patch_size, stride=patch_size)
        # Stored as a (1, C, gz, gy, gx) grid so it can be trilinearly resized for other input sizes.
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            heads,
            dim_feedforward=int(embed_dim * mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(embed_dim)
        # ViTPose's "simple decoder": two x2 upsamplings with convs, then a resize to the input grid.
        half = max(decoder_width // 2, 1)
        self.up1 = _conv_block(embed_dim, decoder_width, norm)
        self.up2 = _conv_block(decoder_width, half, norm)
        self.head = nn.Conv3d(half, out_channels, 1)

    def _pos_embed_for(self, grid: Sequence[int]) -> torch.Tensor:
        pos = self.pos_embed
        if tuple(pos.shape[2:]) != tuple(grid):
            pos = F.interpolate(pos, size=tuple(grid), mode="trilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        p = self.patch_size
        pad = [0, 0, 0, 0, 0, 0]
        for axis in range(3):
            pad[2 * (2 - axis) + 1] = (-size[axis]) % p
        if any(pad):
            x = F.pad(x, pad)
        tokens = self.patch_embed(x)
        grid = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2) + self._pos_embed_for(grid)
        tokens = self.encoder_norm(self.encoder(tokens))
        y = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
        y = self.up1(F.interpolate(y, scale_factor=2, mode="trilinear", align_corners=False))
        y = self.up2(F.interpolate(y, scale_factor=2, mode="trilinear", align_corners=False))
        # Map the padded patch grid back onto the unpadded input voxels before resizing.
        padded = x.shape[2:]
        crop = [max(1, round(y.shape[2 + a] * size[a] / padded[a])) for a in range(3)]
        y = y[:, :, : crop[0], : crop[1], : crop[2]]
        return self.head(_resize(y, size))


NETWORKS: dict[str, type[nn.Module]] = {
    ResUNet3D.name: ResUNet3D,
    ViTPose3D.name: ViTPose3D,
}


def build_network(name: str, **hparams: Any) -> nn.Module:
    """Build a registered network by name; unknown names or arguments raise DGLandmarkError."""
    cls = NETWORKS.get(str(name).lower())
    if cls is None:
        raise DGLandmarkError(f"unknown network architecture {name!r}; known: {', '.join(sorted(NETWORKS))}")
    try:
        return cls(**hparams)
    except TypeError as exc:
        raise DGLandmarkError(f"bad hyper-parameters for {name!r}: {exc}") from None


def hparams_of(module: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable constructor arguments that rebuild ``module`` with build_network."""
    hparams = getattr(module, "hparams", None)
    if not isinstance(hparams, dict):
        raise TypeError(f"{type(module).__name__} is not a registered dglandmark network")
    return dict(hparams)


def architecture_of(module: nn.Module) -> dict[str, Any]:
    """``{"name": ..., "hparams": {...}}`` of a registered network, as stored in checkpoints."""
    name = getattr(module, "name", None)
    if name not in NETWORKS:
        raise TypeError(f"{type(module).__name__} is not a registered dglandmark network")
    return {"name": name, "hparams": hparams_of(module)}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class TwoStageDetector(nn.Module):
    """A coarse whole-head network and a fine patch network, stored together in one checkpoint.

    The coarse network sees the head on a low-resolution grid and outputs one map per landmark;
    the fine network sees a high-resolution patch around one landmark's coarse estimate and only
    its own channel is read (so identity comes from the channel, never from patch content alone).
    """

    name = "two-stage"

    def __init__(self, coarse: dict[str, Any], fine: dict[str, Any]) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {"coarse": dict(coarse), "fine": dict(fine)}
        coarse, fine = dict(coarse), dict(fine)
        self.coarse = build_network(coarse.pop("name", "resunet3d"), **coarse)
        self.fine = build_network(fine.pop("name", "resunet3d"), **fine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - stages are called directly
        return self.coarse(x)


NETWORKS[TwoStageDetector.name] = TwoStageDetector
