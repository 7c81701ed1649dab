"""Losses against numbers worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    build_loss,
    foreground_weighted_mse,
    huber,
    l1,
    logcosh,
    mixing_loss,
    mixing_weight,
    mse,
)

LOG2 = 0.6931471805599453
LOGCOSH1 = 0.4337808304830271  # log((e + 1/e) / 2) = log(1.5430806348)
LOGCOSH2 = 1.3250027473578645  # log((e^2 + e^-2) / 2) = log(3.7621956911)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_mse_l1():
    assert mse(t(1, 2, 3), t(0, 0, 0)).item() == pytest.approx(14 / 3)  # (1 + 4 + 9) / 3
    assert l1(t(1, -2, 3), t(0, 0, 0)).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3


def test_huber():
    # r = 0.5 -> 0.5 * 0.25 = 0.125; r = 3 -> 1 * (3 - 0.5) = 2.5; mean 1.3125
    assert huber(t(0.5, 3), t(0, 0)).item() == pytest.approx(1.3125)
    # delta 2: r = 3 -> 2 * (3 - 1) = 4; r = 1 -> 0.5
    assert huber(t(3, 1), t(0, 0), delta=2.0).item() == pytest.approx(2.25)


def test_logcosh_small_and_linear_tail():
    assert logcosh(t(0, 1), t(0, 0)).item() == pytest.approx(LOGCOSH1 / 2)
    assert logcosh(t(2), t(0)).item() == pytest.approx(LOGCOSH2)
    assert logcosh(t(-12), t(0)).item() == pytest.approx(12 - LOG2)
    assert logcosh(t(10), t(0)).item() == pytest.approx(10 - LOG2)  # switch point: both forms agree to 1e-9
    assert logcosh(t(9.999), t(0)).item() == pytest.approx(9.999 - LOG2, abs=1e-8)


def test_logcosh_does_not_overflow_float32_with_finite_gradient():
    pred = torch.tensor([1000.0, -1000.0, 0.5], requires_grad=True)
    loss = logcosh(pred, torch.zeros(3))
    expected = (2 * (1000 - LOG2) + math.log(math.cosh(0.5))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    torch.testing.assert_close(pred.grad, torch.tensor([1 / 3, -1 / 3, math.tanh(0.5) / 3]))
    assert logcosh(torch.tensor([1000.0]), torch.tensor([0.0])).item() == pytest.approx(1000 - LOG2)


def test_mixing_loss():
    assert mixing_weight(0, 3) == pytest.approx(0.25)
    # epoch 0 of 3: t = 1/4; pred 2, target 0: MSE 4, logcosh 1.3250027 -> 1 + 0.75 * 1.3250027
    assert mixing_loss(t(2), t(0), epoch=0, total_epochs=3).item() == pytest.approx(1 + 0.75 * LOGCOSH2)
    # epoch 2 of 3: t = 3/4 -> 3 + 0.25 * 1.3250027
    assert mixing_loss(t(2), t(0), epoch=2, total_epochs=3).item() == pytest.approx(3 + 0.25 * LOGCOSH2)


def test_foreground_weighted_mse():
    # weights 1, 1, 1, 3; squared errors 1, 1, 1, 4 -> (3 + 12) / 6 = 2.5
    assert foreground_weighted_mse(t(1, 1, 1, 8), t(0, 0, 0, 10), fg_weight=3.0).item() == pytest.approx(2.5)
    # threshold 5: target 4 counts as background
    assert foreground_weighted_mse(t(0, 8), t(4, 10), fg_weight=3.0, threshold=5.0).item() == pytest.approx(
        (16 + 3 * 4) / 4
    )
    # fg_weight 1 is plain MSE
    x, y = torch.randn(2, 3, 4, 4, 4), torch.rand(2, 3, 4, 4, 4)
    assert foreground_weighted_mse(x, y, fg_weight=1.0).item() == pytest.approx(mse(x, y).item(), rel=1e-6)


def test_one_channel_target_broadcasts_over_output_channels():
    pred = torch.zeros(2, 3, 4, 4, 4)
    pred[:, 1] = 1.0
    target = torch.zeros(2, 1, 4, 4, 4)
    assert mse(pred, target).item() == pytest.approx(1 / 3)
    assert foreground_weighted_mse(pred, target).item() == pytest.approx(1 / 3)
    assert huber(pred, target).item() == pytest.approx(0.5 / 3)


def test_build_loss():
    assert build_loss("mse")(t(1, 2, 3), t(0, 0, 0)).item() == pytest.approx(14 / 3)
    assert build_loss("huber", delta=2.0)(t(3, 1), t(0, 0)).item() == pytest.approx(2.25)
    assert build_loss("fg-mse", fg_weight=3.0)(t(1, 1, 1, 8), t(0, 0, 0, 10)).item() == pytest.approx(2.5)
    mix = build_loss("mixing")
    assert mix(t(2), t(0), epoch=0, total_epochs=3).item() == pytest.approx(1 + 0.75 * LOGCOSH2)
    assert build_loss("LogCosh")(t(-12), t(0)).item() == pytest.approx(12 - LOG2)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("dice")
