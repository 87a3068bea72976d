"""Gaps in a series: fill them (interpolate, ffill) or drop their time steps, block by block.

Without `--fill`, prepare stops at the first missing value. With it, the stream goes
through a GapFiller, which counts the missing values and the longest gap (the longest
run of consecutive missing steps in one column) for the manifest's fill report.

    interpolate  linear in the step index between the nearest known values of the column
    ffill        the column's last known value
    drop         every time step with a missing value in any column is removed (the
                 stream then runs straight from the step before a gap to the step after)

A gap at the start of a column takes its first known value, one at the end its last
(no extrapolation). Only the rows around an unresolved gap are held back, so memory
grows with the longest gap, not with the input.
Exercised by: python -m pytest -q tests/test_data_fill.py
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpirnn.errors import DataError

FILL_METHODS = ("interpolate", "ffill", "drop")
# CSV cells read as missing (compared stripped and lower-cased); NaN in a .npy is missing too.
MISSING_TEXT = frozenset({"", "na", "nan", "-nan", "+nan"})
FILL_HINT = "pass --fill interpolate|ffill|drop to fill or drop missing values"


def is_missing_text(text: str) -> bool:
    """True for an empty CSV cell, NA or NaN (any case)."""
    return text.strip().lower() in MISSING_TEXT


def check_fill(method: str | None) -> None:
    if method is not None and method not in FILL_METHODS:
        raise DataError(f"--fill {method!r} is not one of {', '.join(FILL_METHODS)}")


@dataclass(frozen=True)
class FillReport:
    """What --fill did: recorded in manifest.json as "fill" and printed by prepare."""

    method: str
    missing_values: int
    longest_gap: int                 # steps, in one column
    longest_gap_column: str | None
    dropped_steps: int

    def describe(self) -> str:
        where = f" (column {self.longest_gap_column!r})" if self.longest_gap_column else ""
        dropped = f", {self.dropped_steps} time step(s) dropped" if self.dropped_steps else ""
        return (f"--fill {self.method}: {self.missing_values} missing value(s), longest gap "
                f"{self.longest_gap} step(s){where}{dropped}")

    def to_json(self) -> dict:
        return {"method": self.method, "missing_values": self.missing_values,
                "longest_gap": self.longest_gap, "longest_gap_column": self.longest_gap_column,
                "dropped_steps": self.dropped_steps}


def fill_report_from_json(value: object, where: str) -> FillReport | None:
    """Parse the manifest's "fill" object; None when absent (no --fill, older manifests)."""
    if value is None:
        return None
    fields = ("method", "missing_values", "longest_gap", "longest_gap_column", "dropped_steps")
    ok = (isinstance(value, dict) and set(value) == set(fields)
          and value["method"] in FILL_METHODS
          and all(isinstance(value[k], int) and not isinstance(value[k], bool) and value[k] >= 0
                  for k in ("missing_values", "longest_gap", "dropped_steps"))
          and (value["longest_gap_column"] is None or isinstance(value["longest_gap_column"], str)))
    if not ok:
        raise DataError(f"{where}: fill must be an object with {', '.join(fields)}: "
                        f"re-run python -m mpirnn.data prepare")
    return FillReport(**value)


class GapFiller:
    """Feed [k, F] blocks with NaN for missing values; get back complete rows, in order.

    `columns` are the column names used in messages and the report (CSV header names, or
    "0", "1", ... for a .npy).
    """

    def __init__(self, method: str, columns: Sequence[str]):
        check_fill(method)
        self.method, self.columns = method, list(columns)
        features = len(self.columns)
        self._pending = np.empty((0, features), np.float64)
        self._start = 0                                  # step index of _pending[0]
        self._last_pos = np.full(features, -1, np.int64)   # last known value, already emitted
        self._last_val = np.zeros(features, np.float64)
        self._run = np.zeros(features, np.int64)         # open gap length per column
        self.missing = self.longest = self.dropped = 0
        self.longest_column: str | None = None

    def feed(self, block: np.ndarray) -> np.ndarray:
        """The rows that are complete now (some may wait for the end of a gap)."""
        block = np.asarray(block, np.float64)
        self._count_gaps(np.isnan(block))
        if self.method == "drop":
            keep = ~np.isnan(block).any(axis=1)
            self.dropped += int((~keep).sum())
            return block[keep]
        rows = np.concatenate([self._pending, block])
        known = ~np.isnan(rows)
        if self.method == "ffill":
            # Each column needs one known value (earlier, or here for a leading gap).
            ready = len(rows) if np.all((self._last_pos >= 0) | known.any(axis=0)) else 0
        else:
            # A row is ready once every column has a known value at or after it.
            last = np.where(known.any(axis=0), len(rows) - 1 - np.argmax(known[::-1], axis=0), -1)
            ready = int(last.min()) + 1
        return self._emit(rows, ready)

    def finish(self) -> np.ndarray:
        """The rows still held: trailing gaps take the column's last known value."""
        if self.method == "drop" or not len(self._pending):
            return np.empty((0, len(self.columns)), np.float64)
        never = [f"column {c!r}" for j, c in enumerate(self.columns)
                 if self._last_pos[j] < 0 and np.isnan(self._pending[:, j]).all()]
        if never:
            raise DataError(f"{', '.join(never)} has no values at all: nothing to fill "
                            f"from; leave it out or fix the input")
        return self._emit(self._pending, len(self._pending))

    def report(self) -> FillReport:
        return FillReport(self.method, self.missing, self.longest, self.longest_column,
                          self.dropped)

    def _emit(self, rows: np.ndarray, ready: int) -> np.ndarray:
        """Fill rows[:ready] using every known value held (and the last ones emitted)."""
        filled = rows[:ready].copy()
        positions = self._start + np.arange(len(rows))
        for j in range(len(self.columns)):
            missing = np.isnan(filled[:, j])
            column = rows[:, j]
            known = ~np.isnan(column)
            if missing.any():
                xp, fp = positions[known], column[known]
                if self._last_pos[j] >= 0:
                    xp = np.concatenate([[self._last_pos[j]], xp])
                    fp = np.concatenate([[self._last_val[j]], fp])
                at = positions[:ready][missing]
                if self.method == "interpolate":
                    filled[missing, j] = np.interp(at, xp, fp)   # clamps: no extrapolation
                else:
                    previous = np.maximum(np.searchsorted(xp, at, side="right") - 1, 0)
                    filled[missing, j] = fp[previous]
            emitted_known = np.flatnonzero(known[:ready])
            if emitted_known.size:
                self._last_pos[j] = self._start + emitted_known[-1]
                self._last_val[j] = column[emitted_known[-1]]
        self._pending = rows[ready:]
        self._start += ready
        return filled

    def _count_gaps(self, missing: np.ndarray) -> None:
        """Missing values, and runs of missing steps per column (runs continue across blocks)."""
        self.missing += int(missing.sum())
        for j in range(missing.shape[1]):
            m = missing[:, j]
            if not m.any():
                self._run[j] = 0
                continue
            edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(np.int8), [0]])))
            starts, ends = edges[::2], edges[1::2]
            lengths = ends - starts
            if starts[0] == 0:
                lengths[0] += self._run[j]
            if int(lengths.max()) > self.longest:
                self.longest, self.longest_column = int(lengths.max()), self.columns[j]
            self._run[j] = lengths[-1] if ends[-1] == len(m) else 0
