"""What `python -m mpirnn.forecast` writes: the CSV, the JSON of errors beside it, the plot.

CSV: `step,forecast,actual` for the first feature, then `forecast_J,actual_J` for each
further feature J (1-based after the first: `forecast_1` is the second feature), then for a
quantile model (train.loss = "quantile") `q<level>` per quantile of the first feature (`q0.1,q0.5,q0.9`)
and `q<level>_J` of feature J (a point model's calibrated band: `q0.1,q0.9`; the JSON's
`calibration` says whether they are calibrated, mpirnn/inference/forecast_band.py); `step` is
1 for the first step after the last observed one; values in data units with every digit
(repr of the float64); `actual` empty where the val split has no value. All three are built
in memory here and written whole by the caller (mpirnn/inference/command.py write_whole).

    python -m pytest -q tests/test_inference_forecast.py
"""

from __future__ import annotations

import io
import json
import math

import numpy as np


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def forecast_csv(forecast: np.ndarray, actual: np.ndarray, quantiles: np.ndarray | None = None,
                 levels=()) -> bytes:
    """`quantiles` [H, F, Q] at `levels` (None: a one-value model, no quantile columns)."""
    features = forecast.shape[1]
    names = ["step", "forecast", "actual"]
    for j in range(1, features):
        names += [f"forecast_{j}", f"actual_{j}"]
    if quantiles is not None:
        names += [f"q{level:g}" + (f"_{j}" if j else "") for j in range(features) for level in levels]
    lines = [",".join(names)]
    for h in range(forecast.shape[0]):
        cells = [str(h + 1)]
        for j in range(features):
            cells += [_cell(forecast[h, j]), _cell(actual[h, j])]
        if quantiles is not None:
            cells += [_cell(v) for v in quantiles[h].reshape(-1)]
        lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode()


def forecast_json(result: dict) -> bytes:
    return (json.dumps(result, indent=1) + "\n").encode()


def forecast_plot(history: np.ndarray, forecast: np.ndarray, actual: np.ndarray, seasonal: np.ndarray | None,
                  fmt: str, title: str, quantiles: np.ndarray | None = None, levels=(),
                  band: str = "quantile band") -> bytes:
    """The first feature: observed history (steps <= 0), forecast and actual (steps 1..H), and the
    band between the outermost quantiles (a quantile model's, or a calibrated one: `band` names it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    horizon = forecast.shape[0]
    past = np.arange(-history.shape[0] + 1, 1)
    ahead = np.arange(1, horizon + 1)
    figure, axes = plt.subplots(figsize=(10, 4.5))
    axes.plot(past, history[:, 0], color="0.35", linewidth=1, label="history (train split)")
    if not np.all(np.isnan(actual[:, 0])):
        axes.plot(ahead, actual[:, 0], color="black", linewidth=1.5, label="actual (val split)")
    if seasonal is not None:
        axes.plot(ahead, seasonal[:, 0], color="tab:orange", linewidth=1, linestyle="--", label="seasonal naive")
    if quantiles is not None:
        axes.fill_between(ahead, quantiles[:, 0, 0], quantiles[:, 0, -1], color="tab:blue", alpha=0.2,
                          linewidth=0, label=f"{levels[0]:g}-{levels[-1]:g} {band}")
    axes.plot(ahead, forecast[:, 0], color="tab:blue", linewidth=1.8, label="forecast")
    axes.axvline(0.5, color="0.6", linewidth=0.8, linestyle=":")
    axes.set_xlabel("step (0 = last observed)")
    axes.set_ylabel("value (data units)")
    axes.set_title(title)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=110)
    plt.close(figure)
    return buffer.getvalue()
