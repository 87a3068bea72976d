"""The time axis of a series: when its first step was, how far apart its steps are, its season.

Prepare infers it from a CSV's time column (`--time-column date`, mpirnn/data/csv_times.py) and
records it in the manifest as `"time"`; every later use (calendar features at training, at
evaluation and in `mpirnn.forecast`) derives a step's timestamp from its index alone,
`start + index × frequency`, so the same step gets the same features everywhere.
Pure: numpy only. Exercised by: python -m pytest -q tests/test_data_time_axis.py
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mpirnn.errors import DataError

# Frequencies of a fixed length, in seconds, and those counted in calendar months.
FIXED_SECONDS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
MONTHS = {"monthly": 1, "quarterly": 3, "yearly": 12}
FREQUENCIES = (*FIXED_SECONDS, *MONTHS)
# The season each frequency suggests (the default seasonal lag): a day of hours, a week of days...
SEASONS = {"hourly": 24, "daily": 7, "weekly": 52, "monthly": 12, "quarterly": 4, "yearly": None}
# Month-based steps, recognised by the spacing in days their timestamps usually have.
MONTH_SPACING_DAYS = {"monthly": (28, 31), "quarterly": (89, 92), "yearly": (365, 366)}


@dataclass(frozen=True)
class TimeAxis:
    """Step i of the train split is at `start + i × frequency`; `offset` is the index of this split's
    first step (0 for train; the train length for the val split that follows it)."""

    column: str
    start: str              # ISO timestamp of the train split's first step, seconds resolution
    frequency: str          # one of FREQUENCIES
    offset: int = 0

    def __post_init__(self) -> None:
        if self.frequency not in FREQUENCIES:
            raise DataError(f"time frequency {self.frequency!r} is not one of {', '.join(FREQUENCIES)}: "
                            f"re-run python -m mpirnn.data prepare")

    @property
    def season(self) -> int | None:
        """The season this frequency suggests (52 weeks, 12 months, 7 days, 24 hours)."""
        return SEASONS[self.frequency]

    def shifted(self, steps: int) -> "TimeAxis":
        """The axis of a split that starts `steps` after this one's first step."""
        return replace(self, offset=self.offset + steps)

    def times(self, steps) -> np.ndarray:
        """datetime64[s] of the split's steps `steps` (integers, may be negative)."""
        index = np.asarray(steps, dtype=np.int64) + self.offset
        start = np.datetime64(self.start, "s")
        if self.frequency in FIXED_SECONDS:
            return start + index * np.timedelta64(FIXED_SECONDS[self.frequency], "s")
        months = start.astype("datetime64[M]") + index * MONTHS[self.frequency]
        return months.astype("datetime64[s]")

    def to_json(self) -> dict:
        return {"column": self.column, "start": self.start, "frequency": self.frequency}


def time_axis_from_json(obj, where: str) -> TimeAxis | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or not {"column", "start", "frequency"} <= set(obj):
        raise DataError(f"{where}: time must be {{column, start, frequency}} or null: re-run prepare")
    try:
        np.datetime64(obj["start"], "s")
    except (ValueError, TypeError):
        raise DataError(f"{where}: time.start {obj['start']!r} is not a timestamp: re-run prepare") from None
    return TimeAxis(str(obj["column"]), str(obj["start"]), str(obj["frequency"]))


def infer_frequency(times: np.ndarray, where: str) -> str:
    """The frequency of sorted timestamps: the most common spacing (so gaps do not decide it)."""
    if len(times) < 2:
        raise DataError(f"{where}: one timestamp is not enough to tell the frequency")
    spacing = np.diff(times.astype("datetime64[s]").astype(np.int64))
    if (spacing <= 0).any():
        at = int(np.argmax(spacing <= 0)) + 1
        raise DataError(f"{where}: timestamp {times[at]} is not after {times[at - 1]}: the time column must "
                        f"increase strictly (sort the file, remove duplicates)")
    values, counts = np.unique(spacing, return_counts=True)
    common = int(values[np.argmax(counts)])
    for name, seconds in FIXED_SECONDS.items():
        if common == seconds:
            return name
    days = common / 86400
    for name, (low, high) in MONTH_SPACING_DAYS.items():
        if low <= days <= high:
            return name
    raise DataError(f"{where}: the timestamps are mostly {common} s apart, which is none of the frequencies "
                    f"mpirnn knows ({', '.join(FREQUENCIES)}): resample the series")


def step_indices(times: np.ndarray, start: np.datetime64, frequency: str, where: str) -> np.ndarray:
    """Each timestamp's step index from `start`; DataError for one that falls between steps."""
    times = times.astype("datetime64[s]")
    if frequency in FIXED_SECONDS:
        seconds = (times - np.datetime64(start, "s")).astype(np.int64)
        index, off = np.divmod(seconds, FIXED_SECONDS[frequency])
    else:
        months = (times.astype("datetime64[M]") - np.datetime64(start, "M")).astype(np.int64)
        index, off = np.divmod(months, MONTHS[frequency])
    if off.any():
        at = int(np.argmax(off != 0))
        raise DataError(f"{where}: timestamp {times[at]} is not on the {frequency} steps that start at {start}: "
                        f"resample the series to one frequency")
    return index
