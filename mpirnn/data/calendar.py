"""Calendar features of a series' time steps: where each step falls in the day, week and year,
as points on the unit circle (sin, cos), so December and January are neighbours.

Which cycles depend on the frequency (a weekly series has no hour of day; a monthly one no day
of week). They are a pure function of timestamps, and the timestamps of a split's steps a pure
function of their indices (mpirnn/data/time_axis.py), so prepare, training, evaluation and
forecast compute the same numbers for the same step on any grid.
Exercised by: python -m pytest -q tests/test_data_calendar_lags.py
"""

from __future__ import annotations

import numpy as np

from mpirnn.data.time_axis import FREQUENCIES

DAY = 86400
YEAR_DAYS = 365.25
# The cycles each frequency is given, finest first.
CYCLES = {"hourly": ("day", "week", "year"), "daily": ("week", "year"), "weekly": ("year",),
          "monthly": ("months",), "quarterly": ("quarters",), "yearly": ()}
assert set(CYCLES) == set(FREQUENCIES)


def calendar_width(frequency: str | None) -> int:
    """How many calendar features a frequency gives (a sin and a cos per cycle; 0 for None)."""
    return 2 * len(CYCLES[frequency]) if frequency else 0


def calendar_names(frequency: str) -> list[str]:
    return [f"{cycle}_{part}" for cycle in CYCLES[frequency] for part in ("sin", "cos")]


def cycle_phase(times: np.ndarray, cycle: str) -> np.ndarray:
    """Each timestamp's position in one cycle, as a fraction in [0, 1)."""
    seconds = times.astype("datetime64[s]")
    days = seconds.astype("datetime64[D]")
    into_day = (seconds - days).astype(np.int64) / DAY
    if cycle == "day":
        return into_day
    if cycle == "week":   # 1970-01-01 was a Thursday: Monday is 0
        return ((days.astype(np.int64) + 3) % 7 + into_day) / 7
    if cycle == "year":
        into_year = (days - seconds.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
        return (into_year + into_day) / YEAR_DAYS
    month = seconds.astype("datetime64[M]").astype(np.int64) % 12
    return month / 12 if cycle == "months" else (month // 3) / 4


def calendar_features(times: np.ndarray, frequency: str) -> np.ndarray:
    """[n, calendar_width(frequency)] float64: sin and cos of each cycle's phase."""
    columns = []
    for cycle in CYCLES[frequency]:
        angle = 2 * np.pi * cycle_phase(times, cycle)
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1) if columns else np.zeros((len(times), 0))
