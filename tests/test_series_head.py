"""The series head's losses (pinball and multi-step squared error) and their gradients against hand
formulas in float64, and the horizon targets a unit reads against the whole window's.

    python -m pytest -q tests/test_series_head.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpirnn.config import load_config
from mpirnn.data.horizon import HorizonTargets, targets_per_window, window_terms
from mpirnn.models import build_model
from mpirnn.models.series_head import SeriesOutputs

QUANTILES = (0.1, 0.5, 0.9)


def random(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hand_pinball(prediction: np.ndarray, target: np.ndarray, q: float) -> np.ndarray:
    return np.maximum(q * (target - prediction), (q - 1) * (target - prediction))


class Identity(nn.Linear):
    """A head that passes its inputs through, so a test sets the predictions directly."""

    def __init__(self, width: int):
        super().__init__(width, width, dtype=torch.float64)
        with torch.no_grad():
            self.weight.copy_(torch.eye(width, dtype=torch.float64))
            self.bias.zero_()


def test_pinball_loss_and_gradient_equal_the_hand_formula():
    head = SeriesOutputs(features=2, quantiles=QUANTILES)
    prediction = random((4, 5, head.width), 1).requires_grad_()
    targets = random((4, 5, 2), 2)
    loss = head.loss_sum(Identity(head.width), prediction, targets)
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
    assert float(head.loss_sum(Identity(1), prediction, targets).detach()) == pytest.approx(
        0.5 * float((prediction - targets).abs().sum()), rel=1e-14)


@pytest.mark.parametrize("quantiles", [(), QUANTILES], ids=["mse", "quantile"])
def test_multi_step_terms_are_the_next_steps_and_the_origins_steps_ahead(quantiles):
    # T = 11, H = 3: origins at steps 8, 5, 2; each step is scored on its next step, the origins
    # also on 2 and 3 steps ahead. Against the hand sum over window_terms, loss and gradient.
    T, H, Fs = 11, 3, 2
    head = SeriesOutputs(features=Fs, horizon=H, quantiles=quantiles)
    window = random((2, T + 1, Fs), 5)
    prediction = random((2, T, head.width), 6).requires_grad_()
    loss = head.loss_sum(Identity(head.width), prediction, HorizonTargets(window[:, 1:], 0, T, T, H))
    loss.backward()
    terms = torch.from_numpy(np.stack([window_terms(w, H) for w in window.numpy()]))   # [2, T, H, F]
    assert int(torch.isfinite(terms[0, ..., 0]).sum()) == targets_per_window(T, H) == 11 + 3 * 2
    assert torch.isfinite(terms[0, [2, 5, 8]]).all() and not torch.isfinite(terms[0, [0, 1, 3, 9, 10], 1:]).any()
    p = prediction.detach().reshape(2, T, H, Fs, head.per_value)
    diff = terms[..., None] - p
    scored = torch.isfinite(diff)
    if quantiles:
        q = torch.tensor(quantiles, dtype=torch.float64)
        expected = torch.maximum(q * diff, (q - 1) * diff)[scored].sum() / 3
        gradient = torch.where(diff > 0, -q, 1 - q) / 3
    else:
        expected, gradient = diff[scored].square().sum(), -2 * diff
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-13)
    grad = prediction.grad.reshape(p.shape)
    assert torch.all(grad[~scored] == 0)
    torch.testing.assert_close(grad[scored], gradient[scored], rtol=1e-13, atol=1e-15)


def test_the_point_forecast_is_the_median_or_the_middle_quantile():
    assert SeriesOutputs(1, quantiles=QUANTILES).point_index == 1
    assert SeriesOutputs(1, quantiles=(0.5, 0.8, 0.9, 0.95)).point_index == 0
    assert SeriesOutputs(1, quantiles=(0.2, 0.4, 0.6, 0.8)).point_index == 2
    head = SeriesOutputs(features=2, horizon=2, quantiles=QUANTILES)
    outputs = torch.arange(12.0, dtype=torch.float64)[None]          # laid out [H=2, F=2, Q=3]
    assert head.next_point(Identity(12), outputs).tolist() == [[1.0, 4.0]]


@pytest.mark.parametrize("seq_len, horizon", [(9, 2), (9, 3), (9, 9), (5, 4), (12, 4)])
def test_every_cut_of_a_window_scores_the_windows_terms(seq_len, horizon):
    # However the window is cut into segments and chunks, the pieces' terms are the whole window's.
    window = torch.from_numpy(np.random.default_rng(0).normal(size=(1, seq_len + 1, 2)))
    whole = window_terms(window[0].numpy(), horizon)
    targets = HorizonTargets(window[:, 1:], 0, seq_len, seq_len, horizon)
    for t0 in range(seq_len):
        for t1 in range(t0 + 1, seq_len + 1):
            segment = targets[:, t0:seq_len][:, 0:t1 - t0]     # a segment, then a chunk of it
            got = np.full((t1 - t0, horizon, 2), np.nan)
            got[:, 0] = segment.next_values()[0].numpy()
            where, ahead = segment.origins()
            got[where.numpy(), 1:] = ahead[0].numpy()
            np.testing.assert_array_equal(got, whole[t0:t1])


def test_the_model_head_is_as_wide_as_its_outputs():
    cfg = load_config(None, ['train.loss="quantile"', "train.horizon=4", "model.hidden=8", "model.layers=1"])
    assert build_model(cfg, features=3).head.out_features == 4 * 3 * 3
    assert build_model(load_config(None, []), features=3).head.out_features == 3


def test_tokens_and_labelled_tasks_refuse_the_series_settings():
    from types import SimpleNamespace

    from mpirnn.errors import ConfigError
    from mpirnn.training.tasks import check_objective

    def manifest(tokens, task="next"):
        return SimpleNamespace(is_tokens=tokens, root="data/x",
                               task_spec=SimpleNamespace(labelled=task != "next", task=task))

    quantile = load_config(None, ['train.loss="quantile"'])
    with pytest.raises(ConfigError, match=r"train.loss = 'quantile' applies to next-step series models and "
                                          r"data/x holds tokens: leave train.loss = \"auto\""):
        check_objective(quantile, manifest(True))
    with pytest.raises(ConfigError, match="train.horizon = 3 applies to next-step series models and data/x "
                                          "holds task 'classify'"):
        check_objective(load_config(None, ["train.horizon=3"]), manifest(False, "classify"))
    check_objective(quantile, manifest(False))                                       # a series: fine
    check_objective(load_config(None, ['train.loss="mse"']), manifest(False, "regress"))   # its own loss
