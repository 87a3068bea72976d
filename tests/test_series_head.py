"""The series head's losses (pinball and multi-step squared error) and their gradients against hand
formulas in float64, and the horizon targets a segment reads against the whole window's.

    python -m pytest -q tests/test_series_head.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpirnn.config import load_config
from mpirnn.data.horizon import last_target_step, spread, targets_per_window, windows_of_targets
from mpirnn.models import build_model
from mpirnn.models.series_head import SeriesOutputs

QUANTILES = (0.1, 0.5, 0.9)


def random(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hand_pinball(prediction: np.ndarray, target: np.ndarray, q: float) -> np.ndarray:
    return np.maximum(q * (target - prediction), (q - 1) * (target - prediction))


def test_pinball_loss_and_gradient_equal_the_hand_formula():
    head = SeriesOutputs(features=2, quantiles=QUANTILES)
    prediction = random((4, 5, head.width), 1).requires_grad_()
    targets = random((4, 5, 2), 2)
    loss = head.loss_sum(prediction, targets)
    loss.backward()
    p = prediction.detach().numpy().reshape(4, 5, 1, 2, 3)
    y = targets.numpy()[:, :, None, :, None]
    expected = sum(hand_pinball(p[..., k], y[..., 0], q).sum() for k, q in enumerate(QUANTILES)) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-14)
    # d/dp of q (y - p) for y > p is -q; of (q - 1)(y - p) for y < p is 1 - q; averaged over 3 quantiles.
    q = np.array(QUANTILES)
    gradient = np.where(y > p, -q, 1 - q) / 3
    np.testing.assert_allclose(prediction.grad.numpy().reshape(p.shape), gradient, rtol=1e-14)


def test_a_single_median_is_half_the_absolute_error():
    head = SeriesOutputs(features=1, quantiles=(0.5,))
    prediction, targets = random((3, 7, 1), 3), random((3, 7, 1), 4)
    assert float(head.loss_sum(prediction, targets)) == pytest.approx(
        0.5 * float((prediction - targets).abs().sum()), rel=1e-14)


def test_multi_step_squared_error_skips_the_steps_past_the_window():
    head = SeriesOutputs(features=2, horizon=3)
    prediction = random((2, 4, head.width), 5).requires_grad_()
    targets = random((2, 4, 3, 2), 6)
    targets[:, 2:, 2] = float("nan")
    targets[:, 3:, 1] = float("nan")
    loss = head.loss_sum(prediction, targets)
    loss.backward()
    diff = targets - prediction.detach().reshape(2, 4, 3, 2)
    present = ~torch.isnan(diff)
    assert float(loss) == pytest.approx(float(diff[present].square().sum()), rel=1e-14)
    gradient = prediction.grad.reshape(2, 4, 3, 2)
    assert torch.all(gradient[~present] == 0)
    torch.testing.assert_close(gradient[present], -2 * diff[present], rtol=1e-14, atol=0)


def test_quantiles_and_horizon_together():
    head = SeriesOutputs(features=1, horizon=2, quantiles=QUANTILES)
    prediction = random((1, 3, head.width), 7)
    targets = random((1, 3, 2, 1), 8)
    targets[:, 2, 1] = float("nan")
    p = prediction.numpy().reshape(1, 3, 2, 1, 3)
    y = targets.numpy()
    expected = 0.0
    for t in range(3):
        for h in range(2):
            if not np.isnan(y[0, t, h, 0]):
                expected += sum(hand_pinball(p[0, t, h, 0, k], y[0, t, h, 0], q) for k, q in enumerate(QUANTILES))
    assert float(head.loss_sum(prediction, targets)) == pytest.approx(expected / 3, rel=1e-14)


def test_the_point_forecast_is_the_median_or_the_middle_quantile():
    assert SeriesOutputs(1, quantiles=QUANTILES).point_index == 1
    assert SeriesOutputs(1, quantiles=(0.5, 0.8, 0.9, 0.95)).point_index == 0
    assert SeriesOutputs(1, quantiles=(0.2, 0.4, 0.6, 0.8)).point_index == 2
    head = SeriesOutputs(features=2, horizon=2, quantiles=QUANTILES)
    prediction = torch.arange(12.0)[None]          # laid out [H=2, F=2, Q=3]
    assert head.point(prediction).tolist() == [[[1.0, 4.0], [7.0, 10.0]]]
    assert head.next_step(prediction).tolist() == [[1.0, 4.0]]


@pytest.mark.parametrize("seq_len, horizon", [(9, 1), (9, 3), (9, 9), (5, 4)])
def test_a_segment_reads_the_whole_windows_targets(seq_len, horizon):
    window = np.random.default_rng(0).normal(size=(seq_len + 1, 2))
    whole = windows_of_targets(window, horizon)
    assert int(np.isfinite(whole[..., 0]).sum()) == targets_per_window(seq_len, horizon)
    for t0 in range(seq_len):
        for t1 in range(t0 + 1, seq_len + 1):
            last = last_target_step((t0, t1), seq_len, horizon)
            read = torch.from_numpy(window[t0 + 1:last + 1])[None]
            np.testing.assert_array_equal(spread(read, (t0, t1), seq_len, horizon)[0].numpy(), whole[t0:t1])


def test_the_model_head_is_as_wide_as_its_outputs():
    cfg = load_config(None, ['train.loss="quantile"', "train.horizon=4", "model.hidden=8", "model.layers=1"])
    assert build_model(cfg, features=3).head.out_features == 4 * 3 * 3
    assert build_model(load_config(None, []), features=3).head.out_features == 3
