"""The val split: the final fraction of each stream (or of the rows) in its own shards.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_data_splits.py
"""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpirnn.data import __main__ as data_cli
from mpirnn.data.manifest import load_manifest
from mpirnn.data.prepare import DEFAULT_VAL_FRACTION, prepare_csv, prepare_npy, prepare_text
from mpirnn.data.reader import Reader
from mpirnn.errors import DataError


def read_split(manifest) -> np.ndarray:
    return np.concatenate([h5py.File(manifest.shard_path(i), "r")["data"][...]
                           for i in range(len(manifest.shards))])


def both(root):
    return load_manifest(root), load_manifest(root, split="val")


def test_default_fraction_is_documented_value():
    assert DEFAULT_VAL_FRACTION == 0.1


def test_series_val_is_the_last_steps(tmp_path):
    values = np.random.default_rng(1).standard_normal((1_000, 3)).astype(np.float32)
    np.save(tmp_path / "s.npy", values)
    prepare_npy(tmp_path / "s.npy", tmp_path / "ds", shard_size=300, val_fraction=0.25)
    train, val = both(tmp_path / "ds")
    assert (train.length, val.length) == (750, 250)
    assert [s.file for s in train.shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert [s.file for s in val.shards] == ["val-00000.h5"]
    np.testing.assert_array_equal(read_split(train), values[:750])
    np.testing.assert_array_equal(read_split(val), values[750:])
    assert [s.offset for s in val.shards] == [0]   # each split is its own [0, length)


def test_token_stream_and_rows(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(100) % 7)
    prepare_npy(tmp_path / "t.npy", tmp_path / "tok")
    train, val = both(tmp_path / "tok")
    np.testing.assert_array_equal(read_split(val), np.arange(90, 100) % 7)
    assert val.vocab_size == train.vocab_size == 7
    rows = np.arange(40 * 5 * 2, dtype=np.float32).reshape(40, 5, 2)
    np.save(tmp_path / "r.npy", rows)
    prepare_npy(tmp_path / "r.npy", tmp_path / "rows", val_fraction=0.2)
    train, val = both(tmp_path / "rows")
    assert (train.length, val.length, val.seq_len) == (32, 8, 5)
    np.testing.assert_array_equal(read_split(val), rows[32:])


def test_windowed_csv_holds_out_the_last_windows(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n" + "".join(f"{i},{-i}\n" for i in range(103)))
    prepare_csv(csv, tmp_path / "ds", columns=["a"], window=10, val_fraction=0.2)
    train, val = both(tmp_path / "ds")
    assert (train.length, val.length) == (8, 2)   # 10 windows, 3 trailing rows dropped
    np.testing.assert_array_equal(read_split(val)[:, :, 0], np.arange(80, 100).reshape(2, 10))


def test_text_val_is_the_last_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(bytes(range(200)))
    prepare_text([tmp_path / "a.txt"], tmp_path / "ds", val_fraction=0.05)
    train, val = both(tmp_path / "ds")
    assert read_split(val).tobytes() == bytes(range(190, 200)) and train.length == 190


def test_the_reader_reads_the_val_split(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(1_000) % 50)
    prepare_npy(tmp_path / "t.npy", tmp_path / "ds", val_fraction=0.3, shard_size=128)
    val = load_manifest(tmp_path / "ds", split="val")
    reader = Reader(val)
    assert reader.n_windows(20) == (300 - 1) // 20
    block = reader.block([0, 3], 20, 0, 19)
    np.testing.assert_array_equal(block[1].numpy(), (np.arange(760, 780) % 50))


@pytest.mark.parametrize("fraction, length, message", [
    (0.1, 15, r"--val-fraction 0.1 of 15 steps gives a val split of 2 steps"),   # fine: 2
    (0.1, 14, r"--val-fraction 0.1 of 14 steps gives a val split of 1 steps; it needs at "
              r"least 2 \(an input step and its target\): use a larger --val-fraction, more "
              r"data, or --val-fraction 0 for no val split"),
    (0.9, 10, r"leaves 1 steps to train on; it needs at least 2"),
])
def test_too_small_splits_are_refused(tmp_path, fraction, length, message):
    np.save(tmp_path / "s.npy", np.arange(length, dtype=np.float32))
    if length == 15:
        assert prepare_npy(tmp_path / "s.npy", tmp_path / "ds", val_fraction=fraction).length == 13
        return
    with pytest.raises(DataError, match=message):
        prepare_npy(tmp_path / "s.npy", tmp_path / "ds", val_fraction=fraction)
    assert not (tmp_path / "ds").exists()   # refused before anything was written


def test_a_refused_split_leaves_an_existing_dataset_alone(tmp_path):
    np.save(tmp_path / "big.npy", np.arange(100, dtype=np.float32))
    np.save(tmp_path / "tiny.npy", np.arange(5, dtype=np.float32))
    prepare_npy(tmp_path / "big.npy", tmp_path / "ds")
    with pytest.raises(DataError, match="val split of 1 steps"):
        prepare_npy(tmp_path / "tiny.npy", tmp_path / "ds", force=True)
    assert load_manifest(tmp_path / "ds").length == 90


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2, float("nan")])
def test_fraction_out_of_range(tmp_path, fraction):
    np.save(tmp_path / "s.npy", np.arange(100, dtype=np.float32))
    with pytest.raises(DataError, match=r"--val-fraction must be a number in \[0, 1\)"):
        prepare_npy(tmp_path / "s.npy", tmp_path / "ds", val_fraction=fraction)


def test_zero_means_no_val_split_and_force_removes_old_val_shards(tmp_path):
    np.save(tmp_path / "s.npy", np.arange(100, dtype=np.float32))
    prepare_npy(tmp_path / "s.npy", tmp_path / "ds")
    assert (tmp_path / "ds" / "val-00000.h5").exists()
    manifest = prepare_npy(tmp_path / "s.npy", tmp_path / "ds", val_fraction=0, force=True)
    assert manifest.splits == ("train",) and manifest.length == 100
    assert not (tmp_path / "ds" / "val-00000.h5").exists()


def test_cli_val_fraction_validate_and_info(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.arange(300, dtype=np.float32).reshape(100, 3))
    out = str(tmp_path / "ds")
    assert data_cli.main(["prepare", "--out", out, "--npy", str(tmp_path / "s.npy"),
                          "--val-fraction", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "series: 80 steps" in printed and "val split: series: 20 steps" in printed
    assert "(the last 20% of the steps)" in printed
    assert data_cli.main(["validate", out]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"ok {out} (train): series: 80 steps, features=3, 1 shard(s), dtype float32",
        f"ok {out} (val): series: 20 steps, features=3, 1 shard(s), dtype float32"]
    assert data_cli.main(["info", out]) == 0
    info = capsys.readouterr().out
    assert "on disk (train)" in info and "on disk (val): " in info and "val-00000.h5" in info
    # validate covers the val split: damage there is found.
    with h5py.File(tmp_path / "ds" / "val-00000.h5", "r+") as f:
        f["data"][3, 1] = np.nan
    assert data_cli.main(["validate", out]) == 2
    assert "val-00000.h5: NaN at step 3, feature 1" in capsys.readouterr().err


def test_cli_too_small_split_is_one_clear_line(tmp_path):
    np.save(tmp_path / "s.npy", np.arange(8, dtype=np.float32))
    result = subprocess.run([sys.executable, "-m", "mpirnn.data", "prepare", "--out",
                             str(tmp_path / "ds"), "--npy", str(tmp_path / "s.npy")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "val split of 1 steps; it needs at least 2" in result.stderr
