"""Forecasting pieces (mpirnn/inference/forecasting.py, forecast_files.py): de-normalization, the
roll-forward, the baselines, the errors and the CSV. The command end to end, under the real
launcher, is in tests/test_inference_commands.py.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_inference_forecast.py
"""

import math

import numpy as np
import pytest
import torch

from mpirnn.data.normalization import Normalization
from mpirnn.inference import forecast_files, forecasting
from mpirnn.models.model import RecurrentModel


def constant_model(bias, features=2, dtype=torch.float64):
    """A series model whose every prediction is `bias` (normalized units): the head ignores the state."""
    torch.manual_seed(0)
    model = RecurrentModel("gru", 6, 1, 4, features=features).to(dtype)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bias, dtype=dtype))
    return model


def test_forecast_is_denormalized_exactly():
    norm = Normalization(mean=(400.25, -3.5), std=(12.5, 0.0))   # the second column constant: scale 1
    model = constant_model([0.75, -2.0])
    context = np.array([[401.0, -3.5], [402.0, -3.5], [403.0, -3.5]])
    forecast = forecasting.roll_forward(model, context, 4, norm)
    assert forecast.shape == (4, 2) and forecast.dtype == np.float64
    assert np.array_equal(forecast, np.tile([0.75 * 12.5 + 400.25, -2.0 * 1.0 - 3.5], (4, 1)))
    assert forecast[0].tolist() == [409.625, -5.5]


def test_float32_model_denormalizes_its_own_float32_outputs():
    norm = Normalization(mean=(10.0,), std=(3.0,))
    model = constant_model([0.1], features=1, dtype=torch.float32)
    forecast = forecasting.roll_forward(model, np.zeros((2, 1)), 3, norm)
    expected = float(np.float32(0.1)) * 3.0 + 10.0   # the float32 prediction, then float64 arithmetic
    assert forecast[:, 0].tolist() == [expected] * 3


def test_roll_forward_feeds_its_predictions_back():
    torch.manual_seed(1)
    model = RecurrentModel("lstm", 8, 2, 4, features=1).double()
    context = np.sin(np.arange(10.0))[:, None]
    forecast = forecasting.roll_forward(model, context, 5)
    # The same by brute force: rerun the whole sequence (context + forecasts so far) from zero.
    sequence = torch.tensor(context)
    for h in range(5):
        out, _ = model.run_stack(model.embed(sequence[None]), model.zero_state(1, sequence))
        step = model.head(out[:, -1]).detach()
        assert step.item() == pytest.approx(forecast[h, 0], abs=1e-12)
        sequence = torch.cat([sequence, step])


def test_baselines():
    history = np.arange(1.0, 11.0)[:, None]          # 1..10
    assert forecasting.last_value(history, 3)[:, 0].tolist() == [10.0, 10.0, 10.0]
    # season 4: the last season is 7, 8, 9, 10, repeated
    assert forecasting.seasonal_naive(history, 6, 4)[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 7.0, 8.0]


def test_errors_skip_missing_actuals():
    forecast = np.array([[1.0], [2.0], [3.0]])
    actual = np.array([[2.0], [0.0], [np.nan]])
    (scores,) = forecasting.errors(forecast, actual)
    assert scores["rmse"] == pytest.approx(math.sqrt((1 + 4) / 2)) and scores["mae"] == pytest.approx(1.5)
    assert forecasting.errors(forecast, np.full((3, 1), np.nan)) == [{"rmse": None, "mae": None}]


def test_csv_layout():
    forecast = np.array([[1.5, 10.0], [2.25, 20.0]])
    actual = np.array([[1.0, 11.0], [np.nan, np.nan]])
    lines = forecast_files.forecast_csv(forecast, actual).decode().splitlines()
    assert lines == ["step,forecast,actual,forecast_1,actual_1", "1,1.5,1.0,10.0,11.0", "2,2.25,,20.0,"]
    single = forecast_files.forecast_csv(forecast[:, :1], actual[:, :1]).decode().splitlines()
    assert single[0] == "step,forecast,actual" and len(single) == 3


def test_plot_is_an_image():
    pytest.importorskip("matplotlib")
    history = np.sin(np.arange(30.0))[:, None]
    png = forecast_files.forecast_plot(history, history[:5], history[5:10], history[:5], "png", "t")
    assert png.startswith(b"\x89PNG")


def test_a_multi_step_head_forecasts_its_horizon_at_once_then_feeds_the_median_back():
    from mpirnn.models.series_head import SeriesOutputs

    torch.manual_seed(2)
    head = SeriesOutputs(features=1, horizon=3, quantiles=(0.1, 0.5, 0.9))
    model = RecurrentModel("gru", 8, 1, 4, features=1, predicts=head).double()
    context = np.cos(np.arange(12.0))[:, None]
    points, quantiles = forecasting.roll_quantiles(model, context, 7)
    assert points.shape == (7, 1) and quantiles.shape == (7, 1, 3)
    assert np.all(np.diff(quantiles, axis=-1) >= 0) and np.array_equal(points, quantiles[..., 1])
    # By brute force: from the whole sequence so far, the head's 3 steps; their sorted medians go in.
    sequence, expected = torch.tensor(context), []
    while len(expected) < 7:
        out, _ = model.run_stack(model.embed(sequence[None]), model.zero_state(1, sequence))
        ahead = torch.sort(head.shaped(model.head(out[0, -1])).detach(), dim=-1).values   # [3, 1, 3]
        expected += list(ahead[:7 - len(expected)])
        sequence = torch.cat([sequence, ahead[:, :, 1]])
    np.testing.assert_allclose(quantiles, torch.stack(expected).numpy(), atol=1e-12)


def test_quantile_scores_by_hand():
    from mpirnn.inference.quantile_scores import quantile_scores

    levels = (0.1, 0.5, 0.9)
    quantiles = np.array([[[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]], [[0.0, 1.0, 2.0]]])   # [H=3, F=1, Q=3]
    actual = np.array([[2.5], [4.0], [np.nan]])
    (scores,) = quantile_scores(quantiles, actual, levels)
    # step 1 (y = 2.5): 0.1*1.5, 0.5*0.5, 0.1*0.5; step 2 (y = 4): 0.1*3, 0.5*2, 0.9*1; step 3 has no actual
    by_quantile = [(0.15 + 0.3) / 2, (0.25 + 1.0) / 2, (0.05 + 0.9) / 2]
    assert scores["pinball_by_quantile"] == pytest.approx(by_quantile)
    assert scores["pinball"] == pytest.approx(np.mean(by_quantile)) and scores["crps"] == pytest.approx(
        2 * np.mean(by_quantile))
    assert scores["coverage"] == 0.5 and scores["band"] == [0.1, 0.9]


def test_csv_layout_with_quantiles():
    forecast = np.array([[2.0, 20.0]])
    quantiles = np.array([[[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]])
    lines = forecast_files.forecast_csv(forecast, np.full((1, 2), np.nan), quantiles, (0.1, 0.5, 0.9))
    assert lines.decode().splitlines() == [
        "step,forecast,actual,forecast_1,actual_1,q0.1,q0.5,q0.9,q0.1_1,q0.5_1,q0.9_1",
        "1,2.0,,20.0,,1.0,2.0,3.0,10.0,20.0,30.0"]
