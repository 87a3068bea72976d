"""The band `python -m mpirnn.forecast` reports: the model's quantiles, or a point model's forecast,
calibrated on backtests in the train split (mpirnn/inference/backtest.py), and how it says so
(a printed line, the JSON's `calibration` and, for a quantile model, `uncalibrated`).
docs/forecasting.md, "Calibrated bands".

    python -m pytest -q tests/test_forecast_conformal.py
"""

from __future__ import annotations

import numpy as np

from mpirnn.data.reader import Reader
from mpirnn.inference import backtest
from mpirnn.inference.quantile_scores import quantile_scores


def calibrated(model, train, forecast, quantiles, levels, horizon: int, context: int, normalization, inputs,
               count: int, start: int = 0):
    """(band [H, F, Q], its levels, a backtest.Calibration or the reason it was not calibrated).
    A point model (or one quantile) gets a band around its forecast at backtest.POINT_LEVELS; left
    uncalibrated, it keeps its own (quantiles, levels)."""
    if len(levels) < 2:
        band, band_levels = np.stack([forecast] * len(backtest.POINT_LEVELS), axis=-1), backtest.POINT_LEVELS
    else:
        band, band_levels = quantiles, levels
    reader = Reader(train)
    series = reader.read_span(0, train.length).astype(np.float64)   # the train split only: never the val split
    reader.close()
    result, info = backtest.calibrated_band(model, series, band, band_levels, horizon, context,
                                            normalization, inputs, train.time, count, start, centre=forecast)
    if result is None:
        return quantiles, levels, info
    return result, band_levels, info


def calibration_line(calibration, levels, held_out: int = 0) -> str:
    """One printed line: what the band was calibrated on, or why it was not. `held_out`: the
    steps data.holdout kept out of training, which the backtests were scored on."""
    if isinstance(calibration, str):
        return f"mpirnn: note: band not calibrated: {calibration}"
    where = (f"out of sample: the model never trained on the last {held_out} train steps (data.holdout)"
             if held_out else "--no-calibrate: the model's own band")
    return (f"{levels[0]:g}-{levels[-1]:g} band calibrated (split-conformal, {calibration.method}) on "
            f"{calibration.origins} backtests from origins at train steps {calibration.first_origin}.."
            f"{calibration.last_origin}, every {calibration.stride} ({where})")


def calibration_json(count: int, calibration, raw, actual, head_levels, scored: bool, held_out: int = 0) -> dict:
    """`calibration` ({"calibrated": false, "reason": ...} when not; `held_out`: the steps data.holdout
    kept out of training, where the backtests start), and for a calibrated quantile model
    `uncalibrated`: the coverage and pinball loss of its own band, first feature."""
    if not count:
        return {"calibration": {"calibrated": False, "reason": "--no-calibrate"}}
    if isinstance(calibration, str):
        return {"calibration": {"calibrated": False, "reason": calibration}}
    out = {"calibration": {**calibration.to_json(), "held_out": held_out}}
    if raw is not None and len(head_levels) >= 2:
        scores = quantile_scores(raw, actual, head_levels)[0] if scored else {"coverage": None, "pinball": None}
        out["uncalibrated"] = {"coverage": scores["coverage"], "pinball": scores["pinball"]}
    return out
