"""Lags and calendar features are the same numbers whether computed from the prepared CSV's own
timestamps and values ("prepare time"), read by the training and evaluation loaders for any rank's
rows and segment, or rolled forward by the forecast.

    python -m pytest -q tests/test_data_calendar_lags.py
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mpirnn.config import load_config
from mpirnn.data.calendar import calendar_features, calendar_width
from mpirnn.data.csv_times import parse_time
from mpirnn.data.loader import BatchLoader, EvaluationLoader
from mpirnn.data.manifest import load_manifest
from mpirnn.data.model_inputs import ModelInputs, resolve_inputs
from mpirnn.data.reads import Reads
from mpirnn.errors import ConfigError
from mpirnn.inference.forecasting import roll_forward
from mpirnn.models.model import RecurrentModel
from support import make_dated_series, make_series_dataset

LAGS = [7, 3]
SEQ, BATCH = 19, 6


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    return make_dated_series(tmp_path_factory.mktemp("cal") / "ds", length=300, frequency="daily",
                             val_fraction=0.2)


def reference(root, manifest):
    """Each step's expected inputs [steps, width], from the CSV file alone (its dates and values)."""
    with open(root.parent / f"{root.name}.csv") as f:
        rows = list(csv.reader(f))[1:]
    times = np.array([parse_time(r[0], "test") for r in rows], dtype="datetime64[s]")
    stored = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float32)   # as the shards hold them
    values = manifest.normalize(stored.astype(np.float64))
    calendar = calendar_features(times, "daily")
    expected = np.full((len(rows), values.shape[1] * 3 + calendar.shape[1]), np.nan)
    for s in range(max(LAGS) - 1, len(rows) - 1):   # input step s predicts s + 1
        expected[s] = np.concatenate([values[s], values[s + 1 - 7], values[s + 1 - 3], calendar[s + 1]])
    return expected, values, calendar


def config(root, **extra):
    settings = {"data.path": f'"{root}"', "data.seq_len": SEQ, "data.batch_size": BATCH, "data.windows": '"every"',
                "data.lags": str(LAGS), "model.dtype": '"float64"', **extra}
    return load_config(None, [f"{k}={v}" for k, v in settings.items()])


def test_training_reads_equal_the_reference_for_any_rows_and_segment(dated):
    manifest = load_manifest(dated)
    expected, values, _ = reference(dated, manifest)
    cfg = config(dated)
    inputs = resolve_inputs(manifest, cfg)
    assert inputs == ModelInputs(2, (3, 7), "daily") and inputs.width == 2 * 3 + calendar_width("daily")
    whole = BatchLoader(manifest, cfg, Reads((0, BATCH), (0, SEQ)), "cpu", torch.float64)
    assert whole.reader.origin == 6   # no window reads a lag before the series start
    for step in (0, 5, 17):
        x, y = whole.batch(step)
        starts = [whole.reader.start(int(w), SEQ) for w in whole.global_windows(step)]
        reordered = expected[:, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9]]   # the loader orders lags ascending (3, 7)
        for row, start in enumerate(starts):
            np.testing.assert_allclose(x[row].numpy(), reordered[start:start + SEQ], rtol=0, atol=1e-12)
            np.testing.assert_allclose(y[row].numpy(), values[start + 1:start + SEQ + 1], rtol=0, atol=1e-12)
        # Any rank's share (rows 2-4, steps 7-12, as under dp x sp) is the same slice of the batch.
        part = BatchLoader(manifest, cfg, Reads((2, 5), (7, 13)), "cpu", torch.float64)
        px, py = part.batch(step)
        assert torch.equal(px, x[2:5, 7:13]) and torch.equal(py, y[2:5, 7:13])
        # A middle pipeline stage reads nothing; the first only inputs; the last only targets.
        first = BatchLoader(manifest, cfg, Reads((0, BATCH), (0, SEQ), targets=False), "cpu", torch.float64)
        last = BatchLoader(manifest, cfg, Reads((0, BATCH), (0, SEQ), inputs=False), "cpu", torch.float64)
        assert torch.equal(first.batch(step)[0], x) and first.batch(step)[1] is None
        assert last.batch(step)[0] is None and torch.equal(last.batch(step)[1], y)


def test_val_split_reads_its_own_dates(dated):
    train, val = load_manifest(dated), load_manifest(dated, split="val")
    expected, _, _ = reference(dated, train)
    reordered = expected[:, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9]]
    loader = EvaluationLoader(val, SEQ, 4, "cpu", torch.float64, ModelInputs(2, (3, 7), "daily"))
    windows = loader.batches()[0]
    x, _ = loader.read(windows, Reads((0, len(windows)), (0, SEQ)))
    for row, window in enumerate(windows):
        start = train.length + loader.reader.start(int(window), SEQ)
        np.testing.assert_allclose(x[row].numpy(), reordered[start:start + SEQ], rtol=0, atol=1e-12)


def test_forecast_rolls_the_same_inputs_forward(dated):
    train = load_manifest(dated)
    expected, values, calendar = reference(dated, train)
    inputs = ModelInputs(2, (3, 7), "daily")
    torch.manual_seed(0)
    model = RecurrentModel("gru", hidden=5, layers=1, embed=4, features=2, inputs=inputs.width).double()
    seen = []
    model.input.register_forward_hook(lambda module, args, out: seen.append(args[0][0].numpy().copy()))
    T, N, H = train.length, 30, 12
    context = train.denormalize(values[T - N - inputs.back:T])
    forecast = train.normalize(roll_forward(model, context, H, train.normalization, inputs, T - N, train.time))
    reordered = expected[:, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9]]
    np.testing.assert_allclose(seen[0], reordered[T - N:T], rtol=0, atol=1e-12)   # the warm-up, as in training
    known = np.concatenate([values[:T], forecast])   # observed, then the forecast's own values
    for h in range(1, H):
        s = T + h - 1   # the input step fed back, predicting s + 1
        row = np.concatenate([known[s], known[s + 1 - 3], known[s + 1 - 7], calendar[s + 1]])
        np.testing.assert_allclose(seen[h][0], row, rtol=0, atol=1e-9)   # the calendar of the file's own dates


def test_settings_resolve_and_refuse(dated, tmp_path):
    manifest = load_manifest(dated)
    assert resolve_inputs(manifest, config(dated, **{"data.lags": '"auto"'})).lags == (7,)   # the daily season
    assert resolve_inputs(manifest, config(dated, **{"data.lags": "[1]", "data.calendar": "false"})) == \
        ModelInputs(2, (), None)
    plain = make_series_dataset(tmp_path / "plain", length=300)
    assert not resolve_inputs(load_manifest(plain), config(plain, **{"data.lags": '"auto"'})).widens
    with pytest.raises(ConfigError, match="data.calendar = true needs timestamps"):
        resolve_inputs(load_manifest(plain), config(plain, **{"data.calendar": "true"}))
