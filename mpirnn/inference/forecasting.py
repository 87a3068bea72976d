"""Forecasting a series model: warm up on observed steps, then roll forward on its own predictions,
and the two baselines it must beat (last value, seasonal naive), all in data units.

The model reads and predicts normalized values (the train split's mean/std per feature,
recorded in the checkpoint); everything here takes and returns data units, normalizing the
context on the way in and de-normalizing the predictions on the way out. No MPI: the
forecast command runs this on rank 0 with the whole model.

    python -m pytest -q tests/test_inference_forecast.py
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpirnn.models.model import refuse_bidirectional


@torch.no_grad()
def roll_forward(model, context: np.ndarray, horizon: int, normalization=None, inputs=None, first: int = 0,
                 time=None) -> np.ndarray:
    """Forecast `horizon` steps [H, F] (data units) after `context` [N, F] (data units): the point
    forecasts of `roll_quantiles`."""
    return roll_quantiles(model, context, horizon, normalization, inputs, first, time)[0]


@torch.no_grad()
def roll_quantiles(model, context: np.ndarray, horizon: int, normalization=None, inputs=None, first: int = 0,
                   time=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(point forecasts [H, F], quantiles [H, F, Q] or None for a one-value head), data units.

    The model runs over the context from zero states. Its head predicts, from the last step
    reached, the next `model.predicts.horizon` steps (train.horizon; 1 for a next-step model):
    those are forecast, their points (the median, or the middle quantile) are fed back one step
    at a time as inputs, and the head at the last of them predicts the next ones, until `horizon`
    steps are forecast. Quantiles that cross are sorted at each step (a rearrangement that never
    raises the pinball loss).

    With `inputs` (mpirnn/data/model_inputs.py) that add lags or calendar, `context` holds
    `inputs.back` more steps before the N the model warms up on, `first` is the split's index of
    the first of those N and `time` the split's TimeAxis; each step's inputs are built by the same
    function as in training, the lags from the context and the forecast so far.
    """
    refuse_bidirectional(model, "forecast")
    head = model.predicts
    series = np.asarray(context if normalization is None else normalization.normalize(context), np.float64)
    widen = inputs is not None and inputs.widens
    back = inputs.back if widen else 0

    def as_tensor(values):
        return torch.as_tensor(values, dtype=model.dtype, device=model.device)[None]

    warm_up = inputs.build(series, first, time) if widen else series
    state = model.zero_state(1, as_tensor(warm_up))
    outputs, state = model.run_stack(model.embed(as_tensor(warm_up)), state)
    produced = []   # [F, Q] per forecast step, normalized
    while len(produced) < horizon:
        ahead = np.sort(head.shaped(model.head(outputs[0, -1])).double().cpu().numpy(), axis=-1)
        for values in ahead[:horizon - len(produced)]:
            produced.append(values)
            if len(produced) == horizon:
                break
            series = np.concatenate([series, values[None, :, head.point_index]])
            step = inputs.build(series[-(back + 1):], first + len(series) - back - 1, time) if widen else series[-1:]
            outputs, state = model.run_stack(model.embed(as_tensor(step)), state)
    quantiles = np.stack(produced)                                   # [H, F, Q]
    if normalization is not None:   # per feature: move F last, de-normalize, move it back
        quantiles = normalization.denormalize(quantiles.swapaxes(1, 2)).swapaxes(1, 2)
    return quantiles[..., head.point_index], (quantiles if head.quantiles else None)


def last_value(history: np.ndarray, horizon: int) -> np.ndarray:
    """Every forecast step is the last observed value."""
    return np.repeat(history[-1:], horizon, axis=0).astype(np.float64)


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Step h (1-based) is the value one season before it, from the last observed season:
    y[T + h] = y[T + h - season * ceil(h / season)]."""
    last_season = history[-season:].astype(np.float64)
    return np.stack([last_season[(h - 1) % season] for h in range(1, horizon + 1)])


def errors(forecast: np.ndarray, actual: np.ndarray) -> list[dict]:
    """RMSE and MAE per feature over the steps that have an actual value (NaN where none)."""
    result = []
    for j in range(forecast.shape[1]):
        known = ~np.isnan(actual[:, j])
        diff = forecast[known, j] - actual[known, j]
        if diff.size == 0:
            result.append({"rmse": None, "mae": None})
        else:
            result.append({"rmse": math.sqrt(float(np.mean(diff ** 2))), "mae": float(np.mean(np.abs(diff)))})
    return result
