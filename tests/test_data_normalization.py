"""Series normalization: the train split's per-column mean and std, applied by the Reader.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_data_normalization.py
"""

import logging

import numpy as np
import pytest
import torch

from mpirnn.data import __main__ as data_cli
from mpirnn.data.manifest import load_manifest
from mpirnn.data.normalization import Normalization, RunningMoments
from mpirnn.data.prepare import prepare_npy
from mpirnn.data.reader import Reader


@pytest.fixture
def constructed(tmp_path):
    """80 train steps with exactly known statistics, then 20 val steps far outside them.

    column 0: 10 -/+ 2 alternating -> mean 10, std 2; column 1: constant 5 -> std 0 (scale 1);
    column 2: 0, 4 alternating -> mean 2, std 2. Every value is a small dyadic number, so
    normalizing and de-normalizing are exact in float32 and float64.
    """
    sign = np.resize([-1.0, 1.0], 80)
    train = np.stack([10 + 2 * sign, np.full(80, 5.0), 2 + 2 * sign], axis=1)
    val = np.full((20, 3), 1000.0)
    np.save(tmp_path / "s.npy", np.concatenate([train, val]).astype(np.float32))
    return prepare_npy(tmp_path / "s.npy", tmp_path / "ds", val_fraction=0.2, shard_size=30)


def test_statistics_are_the_train_splits(constructed):
    stats = constructed.normalization
    assert stats == Normalization(mean=(10.0, 5.0, 2.0), std=(2.0, 0.0, 2.0))   # val excluded
    assert stats.scale == (2.0, 1.0, 2.0) and stats.constant_columns == (1,)
    assert load_manifest(constructed.root, split="val").normalization == stats


def test_denormalize_exactly(constructed):
    normalized = np.array([[1.0, 0.5, -1.5], [-1.0, 0.0, 0.25]])
    expected = np.array([[12.0, 5.5, -1.0], [8.0, 5.0, 2.5]])
    np.testing.assert_array_equal(constructed.denormalize(normalized), expected)
    np.testing.assert_array_equal(constructed.normalize(expected), normalized)
    tensor = torch.tensor(normalized, dtype=torch.float32)
    back = constructed.denormalize(tensor)
    assert back.dtype == torch.float32 and back.device == tensor.device
    assert torch.equal(back, torch.tensor(expected, dtype=torch.float32))


def test_the_reader_returns_normalized_values(constructed):
    reader = Reader(constructed)
    window = reader.window(0, 8, 0, 8)            # steps 0..8 (8 inputs and the last target)
    expected = np.stack([np.resize([-1.0, 1.0], 9), np.zeros(9), np.resize([-1.0, 1.0], 9)], 1)
    np.testing.assert_array_equal(window, expected)
    block = reader.block([3], 8, 0, 8, dtype=torch.float64)   # steps 24..32: crosses a shard
    np.testing.assert_array_equal(block[0].numpy(), np.stack(
        [np.resize([-1.0, 1.0], 9), np.zeros(9), np.resize([-1.0, 1.0], 9)], 1))
    np.testing.assert_array_equal(constructed.denormalize(block[0].numpy()),
                                  reader.read_span(24, 33))   # read_span: data units
    # The val split is normalized with the train statistics (not its own).
    val_window = Reader(load_manifest(constructed.root, split="val")).window(0, 4, 0, 3)
    np.testing.assert_array_equal(val_window[0], [(1000 - 10) / 2, 1000 - 5, (1000 - 2) / 2])


def test_a_constant_column_warns_by_name_and_never_gives_nan(tmp_path, capsys):
    csv = tmp_path / "x.csv"
    csv.write_text("t,flat\n" + "".join(f"{i},3.5\n" for i in range(50)))
    assert data_cli.main(["prepare", "--out", str(tmp_path / "ds"), "--csv", str(csv),
                          "--columns", "t,flat"]) == 0
    out = capsys.readouterr().out
    assert ("warning: column 'flat' is constant in the train split (std 0): it is centred but "
            "not scaled (std taken as 1)") in out
    manifest = load_manifest(tmp_path / "ds")
    assert manifest.normalization.std[1] == 0.0
    window = Reader(manifest).block([0], 10, 0, 9)
    assert torch.isfinite(window).all() and (window[..., 1] == 0).all()


def test_python_api_warns_through_logging(tmp_path, caplog):
    np.save(tmp_path / "s.npy", np.ones((40, 2), np.float32))
    with caplog.at_level(logging.WARNING, logger="mpirnn.data"):
        prepare_npy(tmp_path / "s.npy", tmp_path / "ds")
    assert [r.getMessage()[:22] for r in caplog.records] == ["column '0' is constant",
                                                             "column '1' is constant"]


def test_sequences_statistics_cover_every_row_and_step(tmp_path):
    rows = (np.random.default_rng(0).standard_normal((30, 7, 2)) * [1, 50]).astype(np.float32)
    np.save(tmp_path / "r.npy", rows)
    manifest = prepare_npy(tmp_path / "r.npy", tmp_path / "ds", val_fraction=0.1)
    train = rows[:27].reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(manifest.normalization.mean, train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(manifest.normalization.std, train.std(0), rtol=1e-12)
    np.testing.assert_allclose(Reader(manifest).window(2, 6, 0, 6),
                               (rows[2] - train.mean(0)) / train.std(0), rtol=1e-6)


def test_running_moments_merge_blocks_exactly():
    x = np.random.default_rng(3).standard_normal((1_000, 3)) * [1, 1e3, 1e-3] + [5, -7, 1e4]
    moments = RunningMoments(3)
    for start in range(0, 1_000, 37):
        moments.add(x[start:start + 37])
    stats = moments.result(["a", "b", "c"])
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, x.std(0), rtol=1e-9)


def test_tokens_are_not_normalized(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(100) % 9)
    manifest = prepare_npy(tmp_path / "t.npy", tmp_path / "ds")
    assert manifest.normalization is None
    ids = np.array([1, 2, 3])
    assert manifest.denormalize(ids) is ids
