"""Gaps in series: --fill interpolate|ffill|drop, the fill report, and the default refusal.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_data_fill.py
"""

import json

import h5py
import numpy as np
import pytest

from mpirnn.data import __main__ as data_cli
from mpirnn.data.fill import GapFiller, FillReport, is_missing_text
from mpirnn.data.manifest import load_manifest
from mpirnn.data.prepare import prepare_csv, prepare_npy
from mpirnn.errors import DataError

nan = np.nan
# Column a: a leading gap, an inner gap of 2 and a trailing gap; column b: one inner gap of 3.
GAPPY = np.array([[nan, 0.0], [1.0, 1.0], [nan, nan], [nan, nan], [4.0, nan],
                  [5.0, 10.0], [6.0, 11.0], [nan, 12.0]])
EXPECTED = {
    "interpolate": [[1, 0], [1, 1], [2, 3.25], [3, 5.5], [4, 7.75], [5, 10], [6, 11], [6, 12]],
    "ffill": [[1, 0], [1, 1], [1, 1], [1, 1], [4, 1], [5, 10], [6, 11], [6, 12]],
    "drop": [[1, 1], [5, 10], [6, 11]],
}


def run(method: str, block_rows: int) -> np.ndarray:
    filler = GapFiller(method, ["a", "b"])
    out = [filler.feed(GAPPY[i:i + block_rows]) for i in range(0, len(GAPPY), block_rows)]
    return np.concatenate(out + [filler.finish()])


@pytest.mark.parametrize("method", ["interpolate", "ffill", "drop"])
@pytest.mark.parametrize("block_rows", [1, 2, 3, 8])
def test_methods_give_the_same_rows_whatever_the_blocks(method, block_rows):
    np.testing.assert_array_equal(run(method, block_rows), EXPECTED[method])


@pytest.mark.parametrize("block_rows", [1, 3, 8])
def test_the_report_counts_values_and_the_longest_gap_across_blocks(block_rows):
    filler = GapFiller("drop", ["a", "b"])
    for i in range(0, len(GAPPY), block_rows):
        filler.feed(GAPPY[i:i + block_rows])
    assert filler.report() == FillReport("drop", missing_values=7, longest_gap=3,
                                         longest_gap_column="b", dropped_steps=5)


def test_a_column_with_no_value_at_all_is_refused():
    filler = GapFiller("interpolate", ["a", "empty"])
    filler.feed(np.array([[1.0, nan], [2.0, nan]]))
    with pytest.raises(DataError, match="column 'empty' has no values at all"):
        filler.finish()


@pytest.mark.parametrize("text, missing", [("", True), ("  ", True), ("NA", True), ("na", True),
                                           ("NaN", True), ("nan", True), ("-nan", True),
                                           ("0", False), ("inf", False), ("N/A?", False)])
def test_missing_csv_cells(text, missing):
    assert is_missing_text(text) == missing


@pytest.fixture
def gappy_csv(tmp_path):
    """The GAPPY rows as CSV, with the three spellings of a missing value, then 22 full rows."""
    cells = {nan: ["", "NA", "NaN"]}
    lines = ["t,a,b"]
    for i, row in enumerate(GAPPY):
        lines.append(",".join([str(i)] + [cells[nan][(i + j) % 3] if np.isnan(v) else str(v)
                                          for j, v in enumerate(row)]))
    lines += [f"{i},{i},{i + 10}" for i in range(8, 30)]
    path = tmp_path / "gappy.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def read(manifest) -> np.ndarray:
    return np.concatenate([h5py.File(manifest.shard_path(i), "r")["data"][...]
                           for i in range(len(manifest.shards))])


def test_without_fill_the_first_gap_stops_prepare_and_names_the_option(gappy_csv, tmp_path):
    with pytest.raises(DataError, match=r"gappy.csv line 2, column 'a' is missing \(empty\): "
                                        r"pass --fill interpolate\|ffill\|drop"):
        prepare_csv(gappy_csv, tmp_path / "ds", columns=["a", "b"])
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_csv_interpolate_is_reported_and_recorded(gappy_csv, tmp_path, capsys):
    out = tmp_path / "ds"
    assert data_cli.main(["prepare", "--out", str(out), "--csv", str(gappy_csv), "--columns",
                          "a,b", "--fill", "interpolate", "--val-fraction", "0.1"]) == 0
    printed = capsys.readouterr().out
    line = ("gappy.csv: --fill interpolate: 7 missing value(s), longest gap 3 step(s) "
            "(column 'b')")
    assert f"note: {line}" in printed and "filled: --fill interpolate: 7 missing" in printed
    manifest = load_manifest(out)
    assert json.loads((out / "manifest.json").read_text())["fill"] == {
        "method": "interpolate", "missing_values": 7, "longest_gap": 3,
        "longest_gap_column": "b", "dropped_steps": 0}
    assert manifest.length + load_manifest(out, split="val").length == 30
    # The last known value of a (6.0) carries to step 7, whose next known value is 8.0 at
    # step 8: interpolation uses every known value in order, across the whole stream.
    expected = np.array(EXPECTED["interpolate"], np.float32)
    expected[7, 0] = 7.0
    np.testing.assert_array_equal(read(manifest)[:8], expected)


def test_csv_drop_removes_time_steps_before_windows_and_split(gappy_csv, tmp_path):
    manifest = prepare_csv(gappy_csv, tmp_path / "ds", columns=["a", "b"], fill="drop",
                           window=5, val_fraction=0.2)
    val = load_manifest(tmp_path / "ds", split="val")
    # 30 rows, 5 with a gap dropped: 25 rows = 5 windows, 4 train and 1 val.
    assert (manifest.length, val.length, manifest.fill.dropped_steps) == (4, 1, 5)
    np.testing.assert_array_equal(read(manifest)[0], [[1, 1], [5, 10], [6, 11], [8, 18], [9, 19]])
    assert "5 with missing values dropped" in manifest.source


def test_npy_series_fill_and_refusals(tmp_path):
    series = np.concatenate([GAPPY, np.arange(40.0).reshape(20, 2)])
    np.save(tmp_path / "s.npy", series)
    with pytest.raises(DataError, match=r"missing value \(NaN\) at index \[0, 0\]: pass --fill"):
        prepare_npy(tmp_path / "s.npy", tmp_path / "ds")
    manifest = prepare_npy(tmp_path / "s.npy", tmp_path / "ds", fill="ffill")
    assert manifest.fill == FillReport("ffill", 7, 3, "1", 0)   # .npy columns by index
    assert manifest.length == 25   # 28 steps, the last 3 held out
    manifest = prepare_npy(tmp_path / "s.npy", tmp_path / "drop", fill="drop", val_fraction=0.1)
    assert manifest.length + load_manifest(tmp_path / "drop", split="val").length == 23
    np.save(tmp_path / "t.npy", np.arange(50))
    with pytest.raises(DataError, match="--fill applies to a series .* not to token ids"):
        prepare_npy(tmp_path / "t.npy", tmp_path / "t", fill="drop")
    np.save(tmp_path / "r.npy", np.zeros((10, 3, 2)))
    with pytest.raises(DataError, match=r"not to \[N, T, F\] rows"):
        prepare_npy(tmp_path / "r.npy", tmp_path / "r", fill="interpolate")


def test_cli_fill_only_for_csv_and_npy(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x" * 100)
    assert data_cli.main(["prepare", "--out", str(tmp_path / "ds"), "--text",
                          str(tmp_path / "a.txt"), "--fill", "drop"]) == 2
    assert "--fill only applies with --csv or --npy" in capsys.readouterr().err
