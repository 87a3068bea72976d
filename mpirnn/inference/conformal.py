"""Split-conformal calibration of a forecast band from backtest forecasts (docs/forecasting.md,
"Calibrated bands"). Pure numpy: what the band is widened or narrowed by, and the band after.

A band [lo, hi] meant to hold a share 1 - alpha of the actual values is scored on K backtest
forecasts (made before the forecast origin, from data the model may see) by the conformity score
of conformalized quantile regression (Romano, Patterson and Candès 2019):

    s = max(lo - y, y - hi)        (for a point forecast lo = hi = yhat, so s = |y - yhat|)

positive where y falls outside the band (by how far), negative inside. The band of the new
forecast becomes [lo - w, hi + w] with w the ceil((n + 1)(1 - alpha))-th smallest of n scores,
i.e. the (1 - alpha)(1 + 1/n) empirical quantile: if the new forecast's errors are exchangeable
with the n scored ones, the band then holds y with probability at least 1 - alpha. w < 0 narrows
a band that was too wide. The scores are taken per lead time h (step h of every backtest is
compared with step h of the forecast), pooled over neighbouring leads until each pool has at
least `min_pool` scores, since K alone is small.

    python -m pytest -q tests/test_forecast_conformal.py
"""

from __future__ import annotations

import math

import numpy as np

# Scores per lead time at least: the pool of a lead grows over its neighbours until it holds this many.
MIN_POOL = 100


def scores(actual: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Conformity scores max(lo - y, y - hi), elementwise (any shape)."""
    return np.maximum(lo - actual, actual - hi)


def conformal_quantile(values: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest of the n values (inf when that exceeds n: too few
    values to promise 1 - alpha)."""
    ordered = np.sort(np.asarray(values, np.float64).reshape(-1))
    n = ordered.size
    rank = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if n == 0 or rank > n:
        return math.inf
    return float(ordered[max(rank, 1) - 1])


def pool_width(origins: int, horizon: int, min_pool: int = MIN_POOL) -> int:
    """w: lead h pools the scores of leads h - w .. h + w (cut at 1 and H) so that a pool of
    2w + 1 leads holds at least `min_pool` scores of `origins` backtests (0: per lead)."""
    if origins >= min_pool:
        return 0
    return min(horizon, math.ceil((math.ceil(min_pool / origins) - 1) / 2))


def widths(lead_scores: np.ndarray, alpha: float, min_pool: int = MIN_POOL) -> tuple[np.ndarray, int]:
    """Per lead, the conformal quantile of its pool: `lead_scores` [K, H] -> ([H], w)."""
    origins, horizon = lead_scores.shape
    w = pool_width(origins, horizon, min_pool)
    result = np.empty(horizon)
    for h in range(horizon):
        result[h] = conformal_quantile(lead_scores[:, max(0, h - w):h + w + 1], alpha)
    return result, w


def band_pairs(levels) -> list[tuple[int, int]]:
    """The bands of a quantile head: outermost pair first, (0, Q-1), (1, Q-2), ...; the middle one
    of an odd Q is the point forecast and is left alone."""
    q = len(levels)
    return [(i, q - 1 - i) for i in range(q // 2)]


def calibrate(band: np.ndarray, levels, backtest_band: np.ndarray, backtest_actual: np.ndarray,
              min_pool: int = MIN_POOL, centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibrate every band of `band` [H, F, Q] (quantiles at `levels`, increasing) on backtests.

    `backtest_band` [K, H, F, Q] holds the same model's forecasts from K earlier origins and
    `backtest_actual` [K, H, F] what happened. Each pair (lo, hi) of `band_pairs` is meant to hold
    a share levels[hi] - levels[lo] of the actuals; it is moved out (or in) by the per-lead width
    of its scores, per feature. No band is narrowed past `centre` [H, F] (the point forecast;
    default the outermost pair's midpoint): it closes there instead of crossing itself, so sorting
    the columns (no quantile crosses another) never moves the point forecast. Returns (the calibrated band [H, F, Q], the
    widths [P, H, F] of the P pairs, in data units).
    """
    horizon, features, _ = band.shape
    pairs = band_pairs(levels)
    out = band.astype(np.float64).copy()
    width = np.empty((len(pairs), horizon, features))
    if centre is None and pairs:
        centre = (band[..., pairs[0][0]] + band[..., pairs[0][1]]) / 2
    for p, (lo, hi) in enumerate(pairs):
        alpha = 1.0 - (levels[hi] - levels[lo])
        for j in range(features):
            s = scores(backtest_actual[:, :, j], backtest_band[:, :, j, lo], backtest_band[:, :, j, hi])
            width[p, :, j], _ = widths(s, alpha, min_pool)
            low, high = band[:, j, lo] - width[p, :, j], band[:, j, hi] + width[p, :, j]
            out[:, j, lo], out[:, j, hi] = np.minimum(low, centre[:, j]), np.maximum(high, centre[:, j])
    return np.sort(out, axis=-1), width
