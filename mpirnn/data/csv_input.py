"""Prepare a dataset from chosen columns of a CSV file: a series, or windows of it.

The file is read twice: once to count the rows (so the val split's start is known before
anything is written), then to parse and write them block by block, so a file larger
than memory works. Empty cells, NA and NaN are missing values: an error naming the
line and column, unless --fill says how to handle them (fill.py).
Try it: python -m mpirnn.data prepare --out /tmp/ds --csv x.csv --columns a,b --fill interpolate
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from mpirnn.data.csv_times import on_steps, time_axis
from mpirnn.data.fill import FILL_HINT, GapFiller, check_fill, is_missing_text
from mpirnn.data.manifest import Manifest
from mpirnn.data.shard_writer import PathLike, check_positive, claim_output
from mpirnn.data.splits import DEFAULT_VAL_FRACTION, SplitWriter, check_val_fraction, finish
from mpirnn.errors import DataError

CSV_BLOCK_ROWS = 65536           # parsed rows held in memory at once
log = logging.getLogger("mpirnn.data")


def prepare_csv(file: PathLike, out: PathLike, *, columns: Sequence[str],
                window: int | None = None, shard_size: int | None = None,
                force: bool = False, val_fraction: float = DEFAULT_VAL_FRACTION,
                fill: str | None = None, time_column: str | None = None,
                season: int | None = None) -> Manifest:
    """Chosen CSV columns as a float32 series [n, F], or with `window=T` as sequences
    [n // T, T, F] of non-overlapping windows (a trailing partial window is dropped).

    The last `val_fraction` of the steps (of the windows, with `window`) is the val split.
    `fill` (interpolate, ffill, drop) handles missing cells on the stream, before windows.
    `time_column` names a column of timestamps: its frequency and start are recorded (the calendar
    features, mpirnn/data/calendar.py) and a step the file skips is a missing row for `fill`.
    `season` (in steps) is recorded for the default seasonal lag; with a time column it defaults
    to the frequency's (52 weekly, 12 monthly, 7 daily, 24 hourly).
    """
    file = pathlib.Path(file)
    if not file.is_file():
        raise DataError(f"CSV file {file} does not exist: check --csv")
    if not columns:
        raise DataError("--columns is empty: name at least one CSV column, e.g. --columns a,b")
    check_positive(shard_size=shard_size, window=window)
    check_val_fraction(val_fraction)
    check_fill(fill)
    columns = list(columns)
    check_positive(season=season)
    axis = _time_axis(file, time_column, window, fill)
    season = season or (axis.season if axis else None)


    def rows():
        """(line, value cells), one per step of the series."""
        if axis is None:
            return _records(file, columns)
        return on_steps(_records(file, [*columns, time_column]), axis, file.name, allow_gaps=fill is not None)

    records = sum(1 for _, cells in rows() if fill != "drop" or not any(map(is_missing_text, cells)))
    features = len(columns)
    kind, row_shape = ("series", (features,)) if window is None else ("sequences",
                                                                      (window, features))
    total = records if window is None else records // window
    empty = (f"{file} has no data rows: nothing to prepare" if window is None else
             f"{file} has {records} data rows, fewer than --window {window}: use a smaller "
             f"window")
    # Built before claim_output: a refused split leaves an existing dataset untouched.
    writer = SplitWriter(pathlib.Path(out), kind, "float32", row_shape, total=total,
                         val_fraction=val_fraction, empty=empty, shard_size=shard_size)
    root = claim_output(out, force)
    filler = GapFiller(fill, columns) if fill else None
    rows_read = 0
    with writer:
        pending = np.empty((0, features), np.float64)
        for block in _csv_blocks(file, rows(), columns, allow_missing=fill is not None):
            rows_read += len(block)
            if filler is not None:
                block = filler.feed(block)
            pending = _write_whole_windows(writer, np.concatenate([pending, block]), window)
        if filler is not None:
            _write_whole_windows(writer, np.concatenate([pending, filler.finish()]), window)
    report = filler.report() if filler else None
    if report:
        log.info(f"{file.name}: {report.describe()}")
    source = f"csv: {file.name} columns {','.join(columns)}, {rows_read} rows"
    if report and report.dropped_steps:
        source += f" ({report.dropped_steps} with missing values dropped)"
    if window is not None:
        source += f" in windows of {window} ({records % window} trailing rows dropped)"
    if axis is not None:
        source += f", {axis.frequency} from {axis.start} (column {time_column})"
    return finish(root, writer, kind=kind, dtype="float32", features=features,
                  seq_len=window, fill=report, columns=columns, val_fraction=val_fraction,
                  source=source, time=axis, season=season)


def _time_axis(file: pathlib.Path, column: str | None, window: int | None, fill: str | None):
    """The time column's axis (None without one); refused where steps would lose their times."""
    if column is None:
        return None
    if window is not None:
        raise DataError("--time-column with --window: rows cut from a series have no calendar of their own; "
                        "prepare the series without --window")
    if fill == "drop":
        raise DataError("--time-column with --fill drop: dropped steps would shift every later step's date; "
                        "use --fill interpolate or ffill")
    return time_axis(column, ((line, cells[0]) for line, cells in _records(file, [column])), file.name)


def _write_whole_windows(writer: SplitWriter, rows: np.ndarray, window: int | None) -> np.ndarray:
    """Write every whole window of `rows` (all rows for a series); return the rest."""
    if window is None:
        writer.write(rows)
        return rows[:0]
    whole = len(rows) // window * window
    writer.write(rows[:whole].reshape(-1, window, rows.shape[1]))
    return rows[whole:]


def _column_indices(file: pathlib.Path, header: list[str], columns: list[str]) -> list[int]:
    """Header positions of `columns`, or a DataError listing the columns that exist."""
    names = [h.strip() for h in header]
    indices = []
    for col in columns:
        if col.strip() not in names:
            close = difflib.get_close_matches(col.strip(), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{file.name} has no column {col!r}{hint}; available: "
                            f"{', '.join(names)}")
        indices.append(names.index(col.strip()))
    return indices


def _records(file: pathlib.Path, columns: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line, cells of the chosen columns) for every non-blank data line."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:   # -sig: Excel's BOM
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{file} is empty: expected a header line naming the columns")
            indices = _column_indices(file, header, columns)
            for row in reader:
                if not row:
                    continue   # blank line
                if len(row) <= max(indices):
                    missing = next(c for i, c in zip(indices, columns) if i >= len(row))
                    raise DataError(f"{file.name} line {reader.line_num}: only {len(row)} "
                                    f"fields, column {missing!r} is missing: fix or remove "
                                    f"that line")
                yield reader.line_num, [row[i] for i in indices]
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                        f"convert it to UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{file}: malformed CSV ({exc}): fix the file") from None


def _csv_blocks(file: pathlib.Path, records: Iterator[tuple[int, list[str]]], columns: list[str],
                allow_missing: bool) -> Iterator[np.ndarray]:
    """float64 blocks [k, F] of the chosen columns, NaN where a value is missing (if
    allowed); every bad cell named by line and column."""
    rows: list[list[float]] = []
    line = 0
    for line, cells in records:
        rows.append([_cell(file, line, text, col, allow_missing)
                     for text, col in zip(cells, columns)])
        if len(rows) == CSV_BLOCK_ROWS:
            yield _float32_range(file, rows, line)
            rows = []
    if rows:
        yield _float32_range(file, rows, line)


def _cell(file: pathlib.Path, line: int, text: str, column: str, allow_missing: bool) -> float:
    if is_missing_text(text):
        if allow_missing:
            return math.nan
        shown = "empty" if not text.strip() else repr(text.strip())
        raise DataError(f"{file.name} line {line}, column {column!r} is missing ({shown}): "
                        f"{FILL_HINT}, or fix the input")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{file.name} line {line}, column {column!r}: {text.strip()!r} is not "
                        f"a number: fix or remove that line") from None
    if not math.isfinite(value):
        raise DataError(f"{file.name} line {line}, column {column!r} is {text.strip()}: "
                        f"infinite values are not data; fix that cell")
    return value


def _float32_range(file: pathlib.Path, rows: list[list[float]], last_line: int) -> np.ndarray:
    block = np.asarray(rows, dtype=np.float64)
    if np.isinf(block.astype(np.float32)).any():   # finite float64 that overflows float32
        raise DataError(f"{file.name}: a value near line {last_line} does not fit float32 "
                        f"(|x| > 3.4e38): rescale the column")
    return block
