"""A CSV's time column (`prepare --csv F --time-column date`): parse it, infer the frequency, and put
every row on its step, with the missing steps between two rows turned into missing values that
`--fill` handles like any other gap.

Timestamps are ISO 8601 (2001-12-29, 2001-12-29 13:00, 2001-12-29T13:00:00, 2001-12; a time
zone is dropped, the wall-clock time kept: the calendar is the local one).
Exercised by: python -m pytest -q tests/test_data_time_axis.py
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator

import numpy as np

from mpirnn.data.time_axis import TimeAxis, infer_frequency, step_indices
from mpirnn.errors import DataError


def parse_time(text: str, where: str) -> np.datetime64:
    text = text.strip()
    try:
        moment = datetime.datetime.fromisoformat(text)
        return np.datetime64(moment.replace(tzinfo=None), "s")
    except ValueError:
        pass
    try:
        return np.datetime64(text, "s")   # year-month, e.g. 2001-12
    except ValueError:
        raise DataError(f"{where}: {text!r} is not an ISO timestamp (e.g. 2001-12-29 or 2001-12-29 13:00): "
                        f"fix that cell") from None


def time_axis(column: str, cells: Iterable[tuple[int, str]], file_name: str) -> TimeAxis:
    """The axis of the time column's cells, given as (line, text) pairs in file order."""
    times = np.array([parse_time(text, f"{file_name} line {line}, column {column!r}") for line, text in cells],
                     dtype="datetime64[s]")
    where = f"{file_name} column {column!r}"
    if len(times) == 0:
        raise DataError(f"{file_name} has no data rows: nothing to prepare")
    frequency = infer_frequency(times, where) if len(times) > 1 else "daily"
    return TimeAxis(column, str(times[0]), frequency)


def on_steps(records: Iterable[tuple[int, list[str]]], axis: TimeAxis, file_name: str, allow_gaps: bool
             ) -> Iterator[tuple[int, list[str]]]:
    """Rows (line, value cells) one per step: the time cell (the last) removed, and an empty row
    (missing values) for every step the file skips, so --fill closes the gap."""
    start, expected = np.datetime64(axis.start, "s"), 0
    for line, cells in records:
        where = f"{file_name} line {line}, column {axis.column!r}"
        moment = np.array([parse_time(cells[-1], where)])
        index = int(step_indices(moment, start, axis.frequency, where)[0])
        if index < expected:
            raise DataError(f"{where}: {cells[-1].strip()} is not after the row before it: the time column must "
                            f"increase strictly (sort the file, remove duplicates)")
        if index > expected and not allow_gaps:
            raise DataError(f"{where}: {index - expected} {axis.frequency} step(s) missing before "
                            f"{cells[-1].strip()}: pass --fill interpolate or ffill to fill them")
        for _ in range(index - expected):
            yield line, [""] * (len(cells) - 1)
        yield line, cells[:-1]
        expected = index + 1
