"""Seasonal lags: beside a step's value, the values one season (or any lag) before the step it predicts.

A lag L is counted from the predicted step: the input at step t predicts t + 1, so lag 1 is the
input itself and lag L adds the value at t + 1 - L. A window whose first input needs values
before the series start is never drawn (the loaders start the first window max(lags) - 1 steps
in), so no lagged value is ever made up. Pure; exercised by:
    python -m pytest -q tests/test_data_calendar_lags.py
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpirnn.errors import ConfigError


def lags_from_setting(setting, season: int | None) -> tuple[int, ...]:
    """data.lags: "auto" (the dataset's season, if it has one) or a list of lags (1 is the input
    itself and is left out); sorted, without repeats."""
    if setting == "auto":
        return (season,) if season and season > 1 else ()
    if not isinstance(setting, list) or not all(isinstance(lag, int) and not isinstance(lag, bool)
                                                for lag in setting):
        raise ConfigError(f"data.lags = {setting!r}: give \"auto\" or a list of steps, e.g. [52]")
    if any(lag < 1 for lag in setting):
        raise ConfigError(f"data.lags = {setting!r}: a lag counts steps back from the predicted step, so it is 1 "
                          f"or more")
    return tuple(sorted({lag for lag in setting if lag > 1}))


def steps_back(lags: Sequence[int]) -> int:
    """How many steps before a window's first input its lagged values reach."""
    return max(lags) - 1 if lags else 0


def lagged_values(values: np.ndarray, lags: Sequence[int]) -> np.ndarray:
    """`values` [back + n, F] are steps [s - back, s + n) (back = steps_back(lags)); returns
    [n, F × len(lags)]: for input step s + i, the values at s + i + 1 - L for each lag L."""
    back = steps_back(lags)
    n = len(values) - back
    columns = [values[back + 1 - lag:back + 1 - lag + n] for lag in lags]
    return np.concatenate(columns, axis=1) if columns else values[back:, :0]
