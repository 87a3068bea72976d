"""How good a quantile forecast is, in data units: the pinball loss, a CRPS estimate and the coverage
of the band between the outermost quantiles (docs/inference.md, `forecast`).

CRPS = 2 ∫ pinball_τ dτ over τ in (0, 1) (Gneiting and Raftery 2007, the quantile form); with
the head's Q quantiles the integral is estimated as twice the mean pinball loss over them, a
coarse estimate with 3 quantiles (equal weights, no interpolation between them).
Pure numpy; exercised by:
    python -m pytest -q tests/test_inference_forecast.py
"""

from __future__ import annotations

import numpy as np


def pinball(quantiles: np.ndarray, actual: np.ndarray, levels) -> np.ndarray:
    """Pinball loss [H, Q] of quantile forecasts [H, Q] against actuals [H] at `levels`."""
    diff = actual[:, None] - quantiles
    q = np.asarray(levels, np.float64)
    return np.maximum(q * diff, (q - 1) * diff)


def quantile_scores(quantiles: np.ndarray, actual: np.ndarray, levels) -> list[dict]:
    """Per feature, over the steps with an actual value: `pinball` (mean over steps and quantiles),
    `pinball_by_quantile`, `crps` (2 x pinball) and `coverage` (the share of actuals inside
    [lowest, highest] quantile, `band`). None where no step has an actual. `quantiles` [H, F, Q]."""
    result = []
    band = [float(levels[0]), float(levels[-1])]
    for j in range(quantiles.shape[1]):
        known = ~np.isnan(actual[:, j])
        if not known.any():
            result.append({"pinball": None, "pinball_by_quantile": None, "crps": None,
                           "coverage": None, "band": band})
            continue
        losses = pinball(quantiles[known, j], actual[known, j], levels)
        inside = (actual[known, j] >= quantiles[known, j, 0]) & (actual[known, j] <= quantiles[known, j, -1])
        mean = float(losses.mean())
        result.append({"pinball": mean, "pinball_by_quantile": [float(v) for v in losses.mean(axis=0)],
                       "crps": 2 * mean, "coverage": float(inside.mean()), "band": band})
    return result
