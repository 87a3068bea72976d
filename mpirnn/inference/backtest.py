"""Backtest forecasts inside the train split, and the band `forecast` calibrates on them
(docs/forecasting.md, "Calibrated bands"; the math is mpirnn/inference/conformal.py).

The forecast starts at the end of the train split (step T). The backtests start at K earlier
origins o_k = T - H - k·stride (k = 0 .. K - 1), each warmed up on the `context` steps before it
(plus the steps its lags read) and rolled H steps ahead by the same code as the forecast
(forecasting.roll_quantiles), so every step a backtest is scored on lies before T: the val split,
which the forecast is scored on, is never read here. No MPI, deterministic (no sampling).

    python -m pytest -q tests/test_forecast_conformal.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpirnn.inference import conformal
from mpirnn.inference.forecasting import roll_quantiles

# Fewer backtests than this and the band is left as the model gives it (with a note).
MIN_ORIGINS = 10
# A point (mse) model's band: its forecast ± the calibrated width, reported at these levels.
POINT_LEVELS = (0.1, 0.9)


def stride_for(horizon: int) -> int:
    """Steps between backtest origins: a quarter of the horizon (so 4 origins per horizon)."""
    return max(1, horizon // 4)


def origins(length: int, horizon: int, context: int, back: int, count: int, stride: int, start: int = 0) -> list[int]:
    """Up to `count` origins, latest first, whose H steps end by `length` (the train split's end),
    whose warm-up (context + back steps) starts at 0 or later, and which are at `start` or later."""
    latest, earliest = length - horizon, max(context + back, start)
    return list(range(latest, earliest - 1, -stride))[:count]


@dataclass
class Calibration:
    """What `forecast` reports of a calibrated band."""

    origins: int                 # K backtests
    stride: int
    first_origin: int            # earliest and latest origin, steps of the train split
    last_origin: int
    pooled_leads: int            # w: lead h pooled leads h-w .. h+w
    method: str                  # "cqr" (a quantile model) or "absolute residual" (a point model)
    widths: list                 # [P][H] per band pair, the first feature, data units

    def to_json(self) -> dict:
        return {"calibrated": True, "origins": self.origins, "stride": self.stride,
                "first_origin": self.first_origin, "last_origin": self.last_origin,
                "pooled_leads": self.pooled_leads, "method": self.method, "widths": self.widths}


def run_backtests(model, series: np.ndarray, starts: list[int], horizon: int, context: int, normalization,
                  inputs, time, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(bands [K, H, F, Q], actuals [K, H, F]) of the backtests from `starts` over `series`, the
    train split's steps [0, T) in data units. A band of `width` columns other than the head's
    quantiles (a point model's) is the point forecast repeated."""
    back = inputs.back if inputs is not None and inputs.widens else 0
    bands, actual = [], []
    for origin in starts:
        warm = series[origin - context - back:origin]
        points, quantiles = roll_quantiles(model, warm, horizon, normalization, inputs, origin - context, time)
        whole = quantiles is not None and quantiles.shape[-1] == width
        bands.append(quantiles if whole else np.stack([points] * width, axis=-1))
        actual.append(series[origin:origin + horizon])
    return np.stack(bands), np.stack(actual).astype(np.float64)


def calibrated_band(model, series: np.ndarray, band: np.ndarray, levels, horizon: int, context: int, normalization,
                    inputs, time, count: int, start: int = 0, centre: np.ndarray | None = None
                    ) -> tuple[np.ndarray | None, Calibration | str]:
    """The forecast's band [H, F, Q] (never narrowed past `centre` [H, F], the point forecast) calibrated on up to `count` backtests over `series` (the
    whole train split, data units) from origins at `start` or later, or (None, why not) when fewer
    than MIN_ORIGINS fit."""
    back = inputs.back if inputs is not None and inputs.widens else 0
    stride = stride_for(horizon)
    starts = origins(len(series), horizon, context, back, count, stride, start)
    if len(starts) < min(count, MIN_ORIGINS):
        after = f" from step {start} on" if start else ""
        return None, (f"only {len(starts)} backtest origin(s) fit in the train split ({len(series)} steps){after} "
                      f"before the forecast origin with --context {context} and --horizon {horizon}; "
                      f"{min(count, MIN_ORIGINS)} needed")
    bands, actual = run_backtests(model, series, starts, horizon, context, normalization, inputs, time, len(levels))
    calibrated, widths = conformal.calibrate(band, levels, bands, actual, centre=centre)
    if not np.all(np.isfinite(widths)):
        return None, f"{len(starts)} backtests are too few for the band's coverage"
    method = "cqr" if tuple(levels) == tuple(model.predicts.quantiles) else "absolute residual"
    info = Calibration(len(starts), stride, min(starts), max(starts),
                       conformal.pool_width(len(starts), horizon), method,
                       [[float(v) for v in widths[p, :, 0]] for p in range(widths.shape[0])])
    return calibrated, info
