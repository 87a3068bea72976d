"""A parser for the UEA/UCR `.ts` format (the time-series archives read by sktime and aeon).

A file is comment lines (`#` or `%`), a header of `@keyword value` lines (keywords in any
case), `@data`, then one case per line: its dimensions separated by `:`, the values of a
dimension by `,`, the label last; `?` (or NaN) is a missing value:

    @problemName JapaneseVowels
    @univariate false
    @dimensions 12
    @equalLength false
    @classLabel true 1 2 3 4 5 6 7 8 9      (or @targetLabel true: regression targets)
    @data
    1.86,1.89,1.93:-0.20,-0.19,-0.23:...:1

Series of unequal length are common (and the reason for lengths); missing steps at the end
of a case are trimmed (archives pad short series with them), missing values inside a series
are refused with the line number, as is every line that does not parse. Time-stamped files
(`@timeStamps true`) are refused. Exercised by: python -m pytest -q tests/test_data_labelled_ts.py
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np

from mpirnn.data.text_lines import read_lines
from mpirnn.errors import DataError

BOOLEAN_KEYS = ("timestamps", "missing", "univariate", "equallength")
KEYS = (*BOOLEAN_KEYS, "problemname", "dimensions", "serieslength", "classlabel",
        "targetlabel", "data")
MISSING = ("?", "nan")


@dataclass
class TsFile:
    """One parsed .ts file: cases as [length, dimensions] float64 arrays and their labels."""

    name: str
    problem: str | None
    classes: tuple[str, ...] | None     # declared by @classLabel, in that order
    series: list[np.ndarray]
    labels: list[str] | list[float]     # class names, or regression targets
    trimmed: int = 0                    # cases whose trailing missing steps were cut

    @property
    def dimensions(self) -> int:
        return self.series[0].shape[1]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.series], np.int64)


def read_ts(path: str | pathlib.Path) -> TsFile:
    """Parse a .ts file; a DataError names the line of the first problem."""
    path = pathlib.Path(path)
    lines = read_lines(path, ".ts")
    header, first_case = _header(path.name, lines)
    parsed = TsFile(path.name, header.get("problemname"), header.get("classlabel") or None,
                    [], [])
    for number in range(first_case, len(lines) + 1):
        text = lines[number - 1].strip()
        if text and not text.startswith(("#", "%")):
            _case(parsed, header, text, f"{path.name} line {number}")
    if not parsed.series:
        raise DataError(f"{path.name}: no cases after @data: nothing to prepare")
    return parsed


def _header(name: str, lines: list[str]) -> tuple[dict, int]:
    """The header's values (lower-case keys) and the line number of the first case."""
    header: dict = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(("#", "%")):
            continue
        where = f"{name} line {number}"
        if not text.startswith("@"):
            raise DataError(f"{where}: {text[:40]!r} comes before @data: expected @keyword "
                            f"lines or comments (# or %)")
        key, _, value = text[1:].partition(" ")
        key, words = key.lower(), value.split()
        if key not in KEYS:
            raise DataError(f"{where}: unknown header keyword @{key}: expected one of "
                            f"{', '.join('@' + k for k in KEYS)}")
        if key == "data":
            _check_header(name, header)
            return header, number + 1
        if key in BOOLEAN_KEYS or key in ("classlabel", "targetlabel"):
            flag = words[0].lower() if words else ""
            if flag not in ("true", "false"):
                raise DataError(f"{where}: @{key} needs true or false, got {value.strip()!r}")
            header[key] = flag == "true"
            if key == "classlabel" and header[key]:
                if len(words) < 2:
                    raise DataError(f"{where}: @classLabel true needs the class labels after it")
                header[key] = tuple(words[1:])
        elif key in ("dimensions", "serieslength"):
            if len(words) != 1 or not words[0].isdigit() or int(words[0]) == 0:
                raise DataError(f"{where}: @{key} needs a positive integer, got {value.strip()!r}")
            header[key] = int(words[0])
        else:
            header[key] = value.strip()
    raise DataError(f"{name}: no @data line: is it a .ts file?")


def _check_header(name: str, header: dict) -> None:
    if header.get("timestamps"):
        raise DataError(f"{name}: @timeStamps true is not supported: write the values without "
                        f"time stamps")
    if not header.get("classlabel") and not header.get("targetlabel"):
        raise DataError(f"{name}: no labels (@classLabel and @targetLabel are false or absent): "
                        f"mpirnn prepares .ts files with class labels or regression targets")
    if header.get("univariate") and header.setdefault("dimensions", 1) != 1:
        raise DataError(f"{name}: @univariate true but @dimensions {header['dimensions']}")


def _case(parsed: TsFile, header: dict, text: str, where: str) -> None:
    """Append one case: its dimensions, trimmed of trailing missing steps, and its label."""
    *dims, label = text.split(":")
    expected = header.get("dimensions") or (parsed.dimensions if parsed.series else None)
    if not dims or (expected is not None and len(dims) != expected):
        raise DataError(f"{where}: {len(dims)} dimension(s) and a label, expected "
                        f"{expected or 'at least 1'} dimension(s) then the label after the last ':'")
    values = [_values(dim, d, where) for d, dim in enumerate(dims)]
    if len({len(v) for v in values}) > 1:
        raise DataError(f"{where}: its dimensions have different lengths "
                        f"({', '.join(str(len(v)) for v in values)}): every dimension of a case "
                        f"has one value per step")
    series = np.array(values, np.float64).T          # [steps, dimensions]
    if header.get("equallength") and "serieslength" in header and \
            len(series) != header["serieslength"]:
        raise DataError(f"{where}: {len(series)} steps but @seriesLength {header['serieslength']}")
    present = np.flatnonzero(~np.isnan(series).all(axis=1))
    if not present.size:
        raise DataError(f"{where}: every value is missing: remove the case")
    if present[-1] + 1 < len(series):
        parsed.trimmed += 1
        series = series[:present[-1] + 1]
    gap = np.argwhere(np.isnan(series))
    if len(gap):
        step, d = map(int, gap[0])
        raise DataError(f"{where}: missing value at dimension {d}, step {step}, inside the series "
                        f"(only missing steps at its end are trimmed): fill it before preparing")
    parsed.series.append(series)
    parsed.labels.append(_label(parsed, header, label.strip(), where))


def _values(dim: str, d: int, where: str) -> list[float]:
    if not dim.strip():
        raise DataError(f"{where}: dimension {d} is empty")
    out = []
    for i, cell in enumerate(dim.split(",")):
        cell = cell.strip()
        if cell.lower() in MISSING:
            out.append(math.nan)
            continue
        try:
            value = float(cell)
        except ValueError:
            raise DataError(f"{where}: {cell[:30]!r} is not a number (dimension {d}, value "
                            f"{i})") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: {cell!r} is not a finite number (dimension {d}, value {i})")
        out.append(value)
    return out


def _label(parsed: TsFile, header: dict, label: str, where: str) -> str | float:
    if parsed.classes:
        if label not in parsed.classes:
            raise DataError(f"{where}: class label {label!r} is not declared by @classLabel "
                            f"({' '.join(parsed.classes)})")
        return label
    try:
        target = float(label)
    except ValueError:
        target = math.nan
    if not math.isfinite(target):
        raise DataError(f"{where}: regression target {label!r} is not a finite number")
    return target
