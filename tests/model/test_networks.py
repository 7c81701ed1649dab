"""Shapes, sizes, registry and a tiny overfit for the heatmap networks."""

from __future__ import annotations

import json

import pytest
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.model.networks import (
    NETWORKS,
    ResUNet3D,
    ViTPose3D,
    architecture_of,
    build_network,
    count_parameters,
    hparams_of,
)


def _tiny_vit(**kw) -> ViTPose3D:
    args = dict(out_channels=3, img_size=32, patch_size=8, embed_dim=32, depth=2, heads=2, decoder_width=16)
    args.update(kw)
    return ViTPose3D(**args)


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_resunet_odd_size_shape(norm: str) -> None:
    net = ResUNet3D(out_channels=5, base_width=8, norm=norm)
    with torch.no_grad():
        y = net(torch.randn(1, 1, 33, 41, 35))
    assert y.shape == (1, 5, 33, 41, 35)


def test_resunet_tiny_sizes_and_depth() -> None:
    net = ResUNet3D(out_channels=2, base_width=4, depth=2, blocks_per_stage=1)
    with torch.no_grad():
        assert net(torch.randn(2, 1, 7, 9, 5)).shape == (2, 2, 7, 9, 5)


def test_resunet_default_param_count() -> None:
    n = count_parameters(ResUNet3D())
    print(f"ResUNet3D default parameters: {n:,}")
    assert 10e6 < n < 20e6


def test_vitpose_odd_size_shape_and_pos_embed_interpolation() -> None:
    net = _tiny_vit()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 33, 41, 35)).shape == (2, 3, 33, 41, 35)
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_vitpose_default_builds() -> None:
    net = ViTPose3D()
    assert net.pos_embed.shape[2:] == (8, 8, 8)
    print(f"ViTPose3D default parameters: {count_parameters(net):,}")


def test_registry_and_hparams_round_trip() -> None:
    assert set(NETWORKS) == {"resunet3d", "vitpose3d", "two-stage"}
    two_stage = build_network("two-stage", coarse=dict(name="resunet3d", base_width=4, depth=1, out_channels=2),
                              fine=dict(name="resunet3d", base_width=4, depth=1, out_channels=2))
    for net in (ResUNet3D(base_width=4, depth=2, norm="group"), _tiny_vit(), two_stage):
        arch = architecture_of(net)
        arch = json.loads(json.dumps(arch))  # must be JSON-serialisable
        rebuilt = build_network(arch["name"], **arch["hparams"])
        assert type(rebuilt) is type(net)
        assert hparams_of(rebuilt) == hparams_of(net)
        assert rebuilt.state_dict().keys() == net.state_dict().keys()


def test_build_network_errors() -> None:
    with pytest.raises(DGLandmarkError, match="unknown network"):
        build_network("unet9000")
    with pytest.raises(DGLandmarkError, match="bad hyper-parameters"):
        build_network("resunet3d", widths=3)
    with pytest.raises(DGLandmarkError, match="norm"):
        build_network("resunet3d", norm="layer")


def test_tiny_overfit_gaussian_blob() -> None:
    torch.manual_seed(0)
    size = 24
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = torch.tensor([10.0, 13.0, 8.0]).view(3, 1, 1, 1)
    target = torch.exp(-((grid - centre) ** 2).sum(0) / (2 * 2.0**2))[None, None]
    x = torch.randn(1, 1, size, size, size)
    net = ResUNet3D(out_channels=1, base_width=4, depth=2, blocks_per_stage=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])
