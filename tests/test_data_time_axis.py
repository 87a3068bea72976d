"""prepare --csv --time-column: the frequency inferred, start and season recorded, skipped steps filled,
and the refusals; manifests without a time column load as before.

    python -m pytest -q tests/test_data_time_axis.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpirnn.data.csv_times import parse_time
from mpirnn.data.manifest import load_manifest
from mpirnn.data.prepare import prepare_csv
from mpirnn.data.reader import Reader
from mpirnn.data.time_axis import TimeAxis, infer_frequency
from mpirnn.errors import DataError
from support import make_dated_series, make_series_dataset


@pytest.mark.parametrize("frequency, season", [("hourly", 24), ("daily", 7), ("weekly", 52), ("monthly", 12)])
def test_frequency_inferred_and_recorded(tmp_path, frequency, season):
    root = make_dated_series(tmp_path / "ds", length=300, frequency=frequency, start="2020-01-31")
    train, val = load_manifest(root), load_manifest(root, split="val")
    assert train.time.frequency == frequency and train.season == season
    assert train.time.offset == 0 and val.time.offset == train.length   # val follows train in time
    assert str(train.time.times(0)).startswith("2020-01")
    assert json.loads((root / "manifest.json").read_text())["version"] == 2


def test_skipped_steps_are_gaps_for_fill(tmp_path):
    root = make_dated_series(tmp_path / "ds", length=60, skip=(10, 11, 12), val_fraction=0.0, features=1)
    m = load_manifest(root)
    assert m.length == 60 and m.fill.missing_values == 3 and m.fill.longest_gap == 3
    values = Reader(m).read_span(9, 14)[:, 0]
    assert np.allclose(np.diff(values[:5]), (values[4] - values[0]) / 4, atol=1e-5)   # a straight line


def test_skipped_step_without_fill_is_refused(tmp_path):
    make_dated_series(tmp_path / "ds", length=40, skip=(5,), val_fraction=0.0)
    csv = tmp_path / "ds.csv"
    with pytest.raises(DataError, match="line 7.*1 daily step.s. missing before 2021-01-10.*--fill interpolate"):
        prepare_csv(csv, tmp_path / "z", columns=["v0"], time_column="date")
    with pytest.raises(DataError, match="dropped steps would shift"):
        prepare_csv(csv, tmp_path / "x", columns=["v0"], time_column="date", fill="drop")
    with pytest.raises(DataError, match="--window"):
        prepare_csv(csv, tmp_path / "y", columns=["v0"], time_column="date", window=5)


def test_bad_timestamps_are_named(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("date,v\n2020-01-01,1\n2020-01-02,2\nsoon,3\n")
    with pytest.raises(DataError, match="line 4.*'soon' is not an ISO timestamp"):
        prepare_csv(csv, tmp_path / "a", columns=["v"], time_column="date")
    csv.write_text("date,v\n2020-01-01,1\n2020-01-03,2\n2020-01-02,3\n2020-01-04,4\n")
    with pytest.raises(DataError, match="increase strictly"):
        prepare_csv(csv, tmp_path / "b", columns=["v"], time_column="date")
    with pytest.raises(DataError, match="none of the frequencies"):
        infer_frequency(np.array(["2020-01-01T00:00", "2020-01-01T00:10"], dtype="datetime64[s]"), "x")


def test_timestamps_and_steps():
    assert parse_time("2001-12-29 13:00+02:00", "x") == np.datetime64("2001-12-29T13:00")   # wall clock kept
    assert parse_time("2001-12", "x") == np.datetime64("2001-12-01")
    months = TimeAxis("d", "2020-01-31T00:00:00", "monthly")
    assert str(months.times(13).astype("datetime64[M]")) == "2021-02"
    assert months.shifted(12).times(1) == months.times(13)


def test_season_option_and_old_manifests(tmp_path):
    root = make_dated_series(tmp_path / "ds", length=100, season=30)
    assert load_manifest(root).season == 30
    old = make_series_dataset(tmp_path / "old", length=500)
    m = load_manifest(old)
    assert m.time is None and m.season is None
    assert "time" not in json.loads((old / "manifest.json").read_text())
