"""Split-conformal calibration of forecast bands (mpirnn/inference/conformal.py) on numbers whose
quantiles are known, and the backtest origins (mpirnn/inference/backtest.py): none reaches past the
train split. The command end to end: tests/test_forecast_calibration_command.py.

Plain pytest, no MPI: .venv/bin/python -m pytest -q tests/test_forecast_conformal.py
"""

import math

import numpy as np
import pytest
import torch

from mpirnn.inference import backtest, conformal
from mpirnn.models.model import RecurrentModel
from mpirnn.models.series_head import SeriesOutputs

Z90 = 1.2815515655446004   # the 0.9 quantile of the standard normal


def test_scores_are_the_distance_outside_the_band():
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([2.0, 2.0, 2.0])
    assert conformal.scores(np.array([1.0, 3.5, -0.25]), lo, hi).tolist() == [-1.0, 1.5, 0.25]
    point = np.array([5.0, 5.0])   # a point forecast: lo = hi, the absolute error
    assert conformal.scores(np.array([3.0, 7.5]), point, point).tolist() == [2.0, 2.5]


def test_the_conformal_quantile_is_the_ceil_n_plus_1_rank():
    values = np.arange(19.0, 0.0, -1.0)           # 19 .. 1, any order
    assert conformal.conformal_quantile(values, 0.2) == 16.0    # ceil(20 * 0.8) = 16th smallest
    assert conformal.conformal_quantile(values, 0.5) == 10.0    # ceil(20 * 0.5) = 10th
    assert conformal.conformal_quantile(np.arange(1.0, 5.0), 0.2) == 4.0   # ceil(5 * 0.8) = 4 of 4
    assert conformal.conformal_quantile(np.arange(1.0, 4.0), 0.2) == math.inf   # ceil(4 * 0.8) = 4 > 3


def test_pooling_over_neighbouring_leads():
    assert conformal.pool_width(100, 52) == 0 and conformal.pool_width(400, 52) == 0
    assert conformal.pool_width(40, 52) == 1      # 3 leads x 40 = 120 >= 100
    assert conformal.pool_width(10, 52) == 5      # 11 x 10
    assert conformal.pool_width(10, 3) == 3       # capped by the horizon
    # Lead 0 pools leads 0..1, lead 2 pools 1..3: one outlier at lead 3 moves leads 2 and 3 only.
    scores = np.zeros((60, 5))
    scores[:, 3] = 10.0
    width, w = conformal.widths(scores, 0.2)
    assert w == 1 and width.tolist() == [0.0, 0.0, 10.0, 10.0, 10.0]


def test_band_pairs_outermost_first():
    assert conformal.band_pairs((0.1, 0.5, 0.9)) == [(0, 2)]
    assert conformal.band_pairs((0.05, 0.25, 0.5, 0.75, 0.95)) == [(0, 4), (1, 3)]
    assert conformal.band_pairs((0.1, 0.9)) == [(0, 1)]
    assert conformal.band_pairs((0.5,)) == []


def gaussian_backtests(origins, horizon, sigma, band, seed=0):
    rng = np.random.default_rng(seed)
    actual = sigma * rng.standard_normal((origins, horizon, 1))
    bands = np.broadcast_to(np.array(band, np.float64), (origins, horizon, 1, len(band))).copy()
    return bands, actual


def test_a_too_narrow_band_is_widened_to_the_true_quantiles():
    # The model says [-1, 0, 1] for the 0.1 / 0.5 / 0.9 quantiles; the truth is N(0, 2^2): its
    # 10-90% band is +-2.563, so the widening must be about 1.563, and fresh draws covered ~80%.
    sigma, levels = 2.0, (0.1, 0.5, 0.9)
    bands, actual = gaussian_backtests(4000, 3, sigma, [-1.0, 0.0, 1.0])
    forecast = np.array([[[-1.0, 0.0, 1.0]]] * 3)
    calibrated, width = conformal.calibrate(forecast, levels, bands, actual)
    assert width.shape == (1, 3, 1)
    np.testing.assert_allclose(width[0, :, 0], sigma * Z90 - 1.0, atol=0.1)
    np.testing.assert_allclose(calibrated[:, 0, 0], -sigma * Z90, atol=0.1)
    np.testing.assert_allclose(calibrated[:, 0, 2], sigma * Z90, atol=0.1)
    assert np.array_equal(calibrated[:, 0, 1], forecast[:, 0, 1])          # the median is left alone
    fresh = sigma * np.random.default_rng(1).standard_normal(20000)
    before = np.mean((fresh >= -1.0) & (fresh <= 1.0))
    after = np.mean((fresh >= calibrated[0, 0, 0]) & (fresh <= calibrated[0, 0, 2]))
    assert before < 0.45 and 0.78 < after < 0.83


def test_a_too_wide_band_is_narrowed():
    bands, actual = gaussian_backtests(4000, 2, 1.0, [-5.0, 0.0, 5.0])
    calibrated, width = conformal.calibrate(np.array([[[-5.0, 0.0, 5.0]]] * 2), (0.1, 0.5, 0.9), bands, actual)
    np.testing.assert_allclose(width[0, :, 0], Z90 - 5.0, atol=0.1)
    np.testing.assert_allclose(calibrated[:, 0, 2], Z90, atol=0.1)


def test_a_point_forecast_gets_a_band_of_its_absolute_errors():
    # lo = hi = the forecast: the width is the conformal quantile of |y - yhat| (N(0, 1): 1.2816).
    bands, actual = gaussian_backtests(4000, 2, 1.0, [3.0, 3.0])
    actual += 3.0
    calibrated, width = conformal.calibrate(np.full((2, 1, 2), 10.0), (0.1, 0.9), bands, actual)
    np.testing.assert_allclose(width[0, :, 0], Z90, atol=0.08)
    np.testing.assert_allclose(calibrated[:, 0, 0], 10.0 - width[0, :, 0])
    np.testing.assert_allclose(calibrated[:, 0, 1], 10.0 + width[0, :, 0])


def test_inner_pairs_get_their_own_coverage_and_nothing_crosses():
    # 5 quantiles, all zero; truth N(0, 1): the 5-95% pair widens to 1.645, the 25-75% pair to 0.674.
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    bands, actual = gaussian_backtests(8000, 1, 1.0, [0.0] * 5)
    calibrated, _ = conformal.calibrate(np.zeros((1, 1, 5)), levels, bands, actual)
    np.testing.assert_allclose(calibrated[0, 0], [-1.645, -0.674, 0.0, 0.674, 1.645], atol=0.08)
    # Backtest bands of +-3 around values within +-0.03 narrow by about 3: the forecast's band of
    # +-1 would cross itself, so it closes at its midpoint, and the quantiles are sorted.
    bands, actual = gaussian_backtests(500, 1, 0.01, [-3.0, 0.0, 3.0])
    closed, width = conformal.calibrate(np.array([[[-1.0, 0.25, 1.0]]]), (0.1, 0.5, 0.9), bands, actual)
    assert width[0, 0, 0] < -2.9 and closed[0, 0].tolist() == [0.0, 0.0, 0.25]
    # Given the point forecast as the centre (here the median, 0.25), it closes there: the median stays.
    at_point, _ = conformal.calibrate(np.array([[[-1.0, 0.25, 1.0]]]), (0.1, 0.5, 0.9), bands, actual,
                                      centre=np.array([[0.25]]))
    assert at_point[0, 0].tolist() == [0.25, 0.25, 0.25]
    # An asymmetric band narrowed a lot: closing at its midpoint (0.5) would move the median (0.1).
    lopsided, _ = conformal.calibrate(np.array([[[0.0, 0.1, 1.0]]]), (0.1, 0.5, 0.9), bands, actual,
                                      centre=np.array([[0.1]]))
    assert lopsided[0, 0, 1] == 0.1 and lopsided[0, 0].tolist() == [0.1, 0.1, 0.1]


def test_backtest_origins_end_before_the_forecast_origin():
    starts = backtest.origins(length=200, horizon=12, context=50, back=12, count=40, stride=3)
    assert starts[0] == 188 and starts[-1] >= 62 and all(a - b == 3 for a, b in zip(starts, starts[1:]))
    assert len(starts) == 40
    assert all(o + 12 <= 200 and o - 50 - 12 >= 0 for o in starts)
    few = backtest.origins(length=100, horizon=12, context=50, back=12, count=40, stride=3)
    assert few == [88, 85, 82, 79, 76, 73, 70, 67, 64] and backtest.stride_for(52) == 13


def test_backtests_use_the_same_rollout_and_only_the_series_given():
    torch.manual_seed(3)
    head = SeriesOutputs(features=1, horizon=4, quantiles=(0.1, 0.5, 0.9))
    model = RecurrentModel("gru", 8, 1, 4, features=1, predicts=head).double()
    series = np.sin(np.arange(120.0) / 4)[:, None]
    starts = backtest.origins(len(series), 6, 20, 0, 12, backtest.stride_for(6))
    bands, actual = backtest.run_backtests(model, series, starts, 6, 20, None, None, None, 3)
    assert bands.shape == (12, 6, 1, 3) and actual.shape == (12, 6, 1)
    from mpirnn.inference.forecasting import roll_quantiles
    _, expected = roll_quantiles(model, series[starts[4] - 20:starts[4]], 6)
    assert np.array_equal(bands[4], expected) and np.array_equal(actual[4], series[starts[4]:starts[4] + 6])
    band = bands[0]
    first, info = backtest.calibrated_band(model, series, band, (0.1, 0.5, 0.9), 6, 20, None, None, None, 12)
    again, _ = backtest.calibrated_band(model, series, band, (0.1, 0.5, 0.9), 6, 20, None, None, None, 12)
    assert np.array_equal(first, again) and info.origins == 12 and info.method == "cqr"   # deterministic
    none, why = backtest.calibrated_band(model, series[:28], band, (0.1, 0.5, 0.9), 6, 20, None, None, None, 12)
    assert none is None and "backtest origin(s) fit" in why
