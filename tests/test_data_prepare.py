"""Tests for `python -m mpirnn.data`: prepare, the manifest contract, and validation.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_data_prepare.py
"""

import json
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpirnn.data import __main__ as data_cli
from mpirnn.data.corpus import prepare_stdlib_corpus, prepare_text
from mpirnn.data.manifest import Manifest, Shard, load_manifest, write_manifest
from mpirnn.data.prepare import prepare_csv, prepare_npy
from mpirnn.data.validate import file_sha256, validate_dataset, validate_shard
from mpirnn.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_all(manifest: Manifest) -> np.ndarray:
    """The whole dataset, shards concatenated along axis 0."""
    parts = []
    for i in range(len(manifest.shards)):
        with h5py.File(manifest.shard_path(i), "r") as f:
            parts.append(f[manifest.dataset][...])
    return np.concatenate(parts)


def write_raw(root: pathlib.Path, data: np.ndarray, *, kind: str, dtype: str,
              dataset: str = "data", **fields) -> pathlib.Path:
    """A one-shard dataset written by hand, so its content can be deliberately wrong."""
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "shard-00000.h5", "w") as f:
        f.create_dataset(dataset, data=data)
    shard = Shard("shard-00000.h5", 0, len(data), file_sha256(root / "shard-00000.h5"))
    fields = {"vocab_size": None, "features": None, "seq_len": None, **fields}
    write_manifest(Manifest(root=root, kind=kind, dtype=dtype, length=len(data),
                            shards=(shard,), source="test", **fields))
    return root


@pytest.fixture
def text_tree(tmp_path):
    """A small directory of text files, including ones prepare must skip or sort."""
    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / ".git").mkdir()
    files = {"b.py": b"print('b')\n" * 40, "a.txt": "naïve ünïcode\n".encode() * 30,
             "pkg/z.py": b"z = 1\n" * 50, "pkg/sub/m.py": bytes(range(256)),
             ".git/HEAD": b"ref: hidden\n"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    return src, files


@pytest.fixture
def token_dataset(tmp_path):
    """A valid three-shard token dataset."""
    src = tmp_path / "in.txt"
    src.write_bytes(bytes(range(256)) * 10)
    return prepare_text([src], tmp_path / "ds", shard_size=1000, val_fraction=0)


# ---- prepare: text -----------------------------------------------------------------------

def test_text_directory_round_trip(text_tree, tmp_path):
    src, files = text_tree
    manifest = prepare_text([src], tmp_path / "ds", shard_size=97)
    expected = b"".join(files[n] for n in ("a.txt", "b.py", "pkg/sub/m.py", "pkg/z.py"))
    val = load_manifest(tmp_path / "ds", split="val")   # the default: the last 10% held out
    assert read_all(manifest).tobytes() + read_all(val).tobytes() == expected
    assert val.length == round(0.1 * len(expected)) and manifest.splits == ("train", "val")
    assert (manifest.kind, manifest.dtype, manifest.vocab_size) == ("tokens", "uint8", 256)
    assert manifest.is_stream and manifest.length + val.length == len(expected)
    assert load_manifest(tmp_path / "ds") == manifest


def test_shards_tile_the_stream(text_tree, tmp_path):
    manifest = prepare_text([text_tree[0]], tmp_path / "ds", shard_size=100, val_fraction=0)
    assert len(manifest.shards) == -(-manifest.length // 100) > 3
    assert [s.offset for s in manifest.shards] == list(range(0, manifest.length, 100))
    assert all(s.length == 100 for s in manifest.shards[:-1])
    assert sum(s.length for s in manifest.shards) == manifest.length
    with h5py.File(manifest.shard_path(0), "r") as f:
        assert f["data"].compression is None and f["data"].chunks == (100,)
        assert f["data"].attrs["vocab_size"] == 256
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == sorted(
        ["manifest.json"] + [s.file for s in manifest.shards])


def test_text_suffix_filter_and_max_bytes(text_tree, tmp_path):
    src, files = text_tree
    manifest = prepare_text([src], tmp_path / "ds", suffixes=[".py"], max_bytes=500,
                            val_fraction=0)
    expected = (files["b.py"] + files["pkg/sub/m.py"] + files["pkg/z.py"])[:500]
    assert read_all(manifest).tobytes() == expected


def test_stdlib_corpus_is_deterministic(tmp_path):
    one = prepare_stdlib_corpus(tmp_path / "one", max_bytes=20_000)
    two = prepare_stdlib_corpus(tmp_path / "two", max_bytes=20_000)
    assert one.length == 18_000 and one.shards[0].sha256 == two.shards[0].sha256
    assert load_manifest(one.root, split="val").length == 2_000
    assert b"def " in read_all(one).tobytes()


def test_refuses_overwrite_without_force(token_dataset, tmp_path):
    src = tmp_path / "other.txt"
    src.write_bytes(b"x" * 10)
    with pytest.raises(DataError, match="already holds a prepared dataset.*--force"):
        prepare_text([src], token_dataset.root, val_fraction=0)
    manifest = prepare_text([src], token_dataset.root, force=True, val_fraction=0)
    assert manifest.length == 10 and len(list(token_dataset.root.glob("shard-*.h5"))) == 1


def test_missing_text_input_and_empty_input(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_text([tmp_path / "nope"], tmp_path / "ds")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        prepare_text([tmp_path / "empty.txt"], tmp_path / "ds")
    assert not (tmp_path / "ds" / "manifest.json").exists()


# ---- prepare: CSV ------------------------------------------------------------------------

@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "weather.csv"
    lines = ["time,temperature,pressure,label"]
    lines += [f"{i},{20 + i * 0.5},{1000 - i},x{i}" for i in range(10)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_columns_series(csv_file, tmp_path):
    manifest = prepare_csv(csv_file, tmp_path / "ds", columns=["pressure", "temperature"],
                           shard_size=4, val_fraction=0)
    data = read_all(manifest)
    assert (manifest.kind, manifest.features, manifest.length) == ("series", 2, 10)
    assert len(manifest.shards) == 3 and data.dtype == np.float32
    np.testing.assert_allclose(data[:, 0], 1000 - np.arange(10))
    np.testing.assert_allclose(data[:, 1], 20 + 0.5 * np.arange(10))


def test_csv_windowed_sequences(csv_file, tmp_path):
    manifest = prepare_csv(csv_file, tmp_path / "ds", columns=["time"], window=3,
                           val_fraction=0)
    data = read_all(manifest)
    assert (manifest.kind, manifest.seq_len, manifest.features) == ("sequences", 3, 1)
    assert data.shape == (3, 3, 1)   # 10 rows: three windows, one row dropped
    np.testing.assert_array_equal(data[:, :, 0], np.arange(9).reshape(3, 3))
    with h5py.File(manifest.shard_path(0), "r") as f:
        assert f["data"].chunks == (1, 3, 1)


def test_csv_windows_span_parse_blocks(csv_file, tmp_path, monkeypatch):
    monkeypatch.setattr("mpirnn.data.csv_input.CSV_BLOCK_ROWS", 4)   # windows straddle blocks
    manifest = prepare_csv(csv_file, tmp_path / "ds", columns=["time", "pressure"], window=3,
                           shard_size=2, val_fraction=0)
    data = read_all(manifest)
    assert data.shape == (3, 3, 2) and len(manifest.shards) == 2
    np.testing.assert_array_equal(data[:, :, 0].ravel(), np.arange(9))


def test_csv_unknown_column_suggests(csv_file, tmp_path):
    with pytest.raises(DataError, match=r"no column 'temprature' \(did you mean "
                                        r"'temperature'\?\).*available: time, temperature"):
        prepare_csv(csv_file, tmp_path / "ds", columns=["temprature"])


def test_csv_bad_cells_named(csv_file, tmp_path):
    with pytest.raises(DataError, match=r"line 2, column 'label': 'x0' is not a number"):
        prepare_csv(csv_file, tmp_path / "ds", columns=["time", "label"], val_fraction=0)
    csv_file.write_text("a,b\n1,2\n3,nan\n")
    with pytest.raises(DataError, match=r"line 3, column 'b' is missing \('nan'\): pass "
                                        r"--fill interpolate\|ffill\|drop"):
        prepare_csv(csv_file, tmp_path / "ds", columns=["a", "b"], val_fraction=0)
    csv_file.write_text("a,b\n1,2\n3,inf\n")
    with pytest.raises(DataError, match=r"line 3, column 'b' is inf: infinite"):
        prepare_csv(csv_file, tmp_path / "ds", columns=["a", "b"], val_fraction=0, fill="ffill")
    assert not (tmp_path / "ds" / "manifest.json").exists()


# ---- prepare: .npy -----------------------------------------------------------------------

@pytest.mark.parametrize("shape, kind, features, seq_len", [
    ((50,), "series", 1, None), ((50, 3), "series", 3, None), ((50, 4, 2), "sequences", 2, 4)])
def test_npy_float_arrays(tmp_path, shape, kind, features, seq_len):
    array = np.random.default_rng(0).standard_normal(shape)
    np.save(tmp_path / "x.npy", array)
    manifest = prepare_npy(tmp_path / "x.npy", tmp_path / "ds", shard_size=16, val_fraction=0)
    assert (manifest.kind, manifest.features, manifest.seq_len) == (kind, features, seq_len)
    assert manifest.length == 50 and len(manifest.shards) == 4
    data = read_all(manifest)
    np.testing.assert_array_equal(data.reshape(shape), array.astype(np.float32))


def test_npy_int_tokens(tmp_path):
    np.save(tmp_path / "t.npy", np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64))
    manifest = prepare_npy(tmp_path / "t.npy", tmp_path / "a", val_fraction=0)
    assert (manifest.kind, manifest.dtype, manifest.vocab_size) == ("tokens", "uint8", 10)
    np.testing.assert_array_equal(read_all(manifest), [3, 1, 4, 1, 5, 9, 2, 6])
    manifest = prepare_npy(tmp_path / "t.npy", tmp_path / "b", vocab_size=1000, val_fraction=0)
    assert (manifest.dtype, manifest.vocab_size) == ("int32", 1000)
    with pytest.raises(DataError, match=r"token id 9 at index 5 is outside \[0, 8\)"):
        prepare_npy(tmp_path / "t.npy", tmp_path / "c", vocab_size=8, val_fraction=0)


def test_npy_bad_inputs(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[1.0, 2.0], [np.nan, 3.0]]))
    with pytest.raises(DataError, match=r"missing value \(NaN\) at index \[1, 0\]: pass --fill"):
        prepare_npy(tmp_path / "nan.npy", tmp_path / "ds", val_fraction=0)
    np.save(tmp_path / "inf.npy", np.array([[1.0, 2.0], [3.0, 1e300]]))
    with pytest.raises(DataError, match=r"non-finite value inf at index \[1, 1\]"):
        prepare_npy(tmp_path / "inf.npy", tmp_path / "ds", val_fraction=0, fill="interpolate")
    np.save(tmp_path / "neg.npy", np.array([1, -2, 3]))
    with pytest.raises(DataError, match="token id -2 at index 1"):
        prepare_npy(tmp_path / "neg.npy", tmp_path / "ds", val_fraction=0)
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match="expected 1-D int tokens"):
        prepare_npy(tmp_path / "s.npy", tmp_path / "ds")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="not a .npy file"):
        prepare_npy(tmp_path / "junk.npy", tmp_path / "ds")


# ---- manifest problems -------------------------------------------------------------------

def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(DataError, match="does not exist.*python -m mpirnn.data prepare"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="no manifest.json.*python -m mpirnn.data prepare"):
        validate_dataset(tmp_path / "dir")


def edit_manifest(root: pathlib.Path, **changes) -> None:
    path = root / "manifest.json"
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("changes, message", [
    ({"format": "other"}, "format is 'other'"),
    ({"version": 4}, "version 4 is newer than this mpirnn reads.*upgrade mpirnn"),
    ({"version": 0}, "version 0 is not a manifest version.*re-run prepare"),
    ({"kind": "images"}, "unknown kind 'images'"),
    ({"length": 9999}, "shards hold 2560 rows but length is 9999"),
    ({"shards": [], "length": 0}, "empty dataset"),
])
def test_bad_manifest_fields(token_dataset, changes, message):
    edit_manifest(token_dataset.root, **changes)
    with pytest.raises(DataError, match=message):
        load_manifest(token_dataset.root)


def test_manifest_not_json_missing_key_and_gap(token_dataset):
    path = token_dataset.root / "manifest.json"
    obj = json.loads(path.read_text())
    obj["shards"][1]["offset"] += 1
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError, match="do not tile.*shard-00001.h5 has offset 1001"):
        load_manifest(token_dataset.root)
    del obj["source"]
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError, match="missing key.*source"):
        load_manifest(token_dataset.root)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(token_dataset.root)


def test_missing_shard_file(token_dataset):
    os.remove(token_dataset.shard_path(1))
    with pytest.raises(DataError, match="shard-00001.h5 is listed in manifest.json but missing"):
        load_manifest(token_dataset.root)


def test_extra_shard_file_is_fine(token_dataset):
    (token_dataset.root / "shard-00099.h5").write_bytes(b"stray")
    assert validate_dataset(token_dataset.root) == token_dataset


# ---- shard content problems --------------------------------------------------------------

def test_truncated_shard(token_dataset):
    path = token_dataset.shard_path(1)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(DataError, match="shard-00001.h5 is not a readable HDF5 file "
                                        r"\(truncated or corrupt\?\): re-run"):
        validate_dataset(token_dataset.root)


def test_checksum_and_parts(token_dataset):
    path = token_dataset.shard_path(1)
    with h5py.File(path, "r+") as f:   # still valid HDF5, different bytes
        f["data"].attrs["note"] = "edited"
    # The default (what the trainer calls) verifies the files too, values scanned or not.
    for scan in (True, False):
        with pytest.raises(DataError, match="shard-00001.h5.*changed after prepare.*re-run"):
            validate_dataset(token_dataset.root, scan_values=scan)
    validate_dataset(token_dataset.root, verify_files=False)
    with pytest.raises(DataError, match="shard-00001.h5 .*changed after prepare"):
        validate_dataset(token_dataset.root, check_checksum=True, verify_files=False)
    validate_dataset(token_dataset.root, part=0, parts=2, check_checksum=True)   # shards 0, 2
    with pytest.raises(DataError, match="shard-00001.h5 .*changed after prepare"):
        validate_dataset(token_dataset.root, part=1, parts=2)


@pytest.mark.parametrize("data, kind, fields, dataset, message", [
    (np.zeros(8, np.uint8), "tokens", {"vocab_size": 256}, "tokens",
     r"no HDF5 dataset named 'data' \(found: tokens\)"),
    (np.zeros(8, np.float32), "tokens", {"vocab_size": 256}, "data",
     "dtype is float32, manifest says uint8"),
    (np.zeros((8, 2), np.uint8), "tokens", {"vocab_size": 256}, "data",
     r"2 dimension\(s\), a tokens dataset has 1 \[n\]"),
    (np.zeros((8, 2, 3), np.float32), "sequences", {"features": 3, "seq_len": 4}, "data",
     r"shape is \[8, 2, 3\], manifest.json expects \[8, 4, 3\]"),
    (np.array([[0.0, 1.0], [2.0, np.nan]], np.float32), "series", {"features": 2}, "data",
     "shard-00000.h5: NaN at step 1, feature 1"),
    (np.array([[[np.inf]]], np.float32), "sequences", {"features": 1, "seq_len": 1}, "data",
     "shard-00000.h5: inf at row 0, step 0, feature 0"),
    (np.array([1, 2, 300, 4], np.int32), "tokens", {"vocab_size": 256}, "data",
     r"shard-00000.h5: token id 300 at step 2 is outside the vocabulary \(vocab_size=256\)"),
])
def test_bad_shard_content(tmp_path, data, kind, fields, dataset, message):
    dtype = "int32" if data.dtype == np.int32 else ("float32" if kind != "tokens" else "uint8")
    root = write_raw(tmp_path / "bad", data, kind=kind, dtype=dtype, dataset=dataset, **fields)
    manifest = load_manifest(root)   # the manifest alone looks fine
    with pytest.raises(DataError, match=message):
        validate_shard(manifest, 0)


# ---- command line ------------------------------------------------------------------------

def test_cli_validate_and_info_in_process(token_dataset, capsys):
    assert data_cli.main(["validate", str(token_dataset.root)]) == 0
    assert data_cli.main(["info", str(token_dataset.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok ") and "tokens: 2560 steps, vocab_size=256, 3 shard(s)" in out
    assert "(train)" in out and "on disk (train)" in out
    assert data_cli.main(["info", str(token_dataset.root / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpirnn.data: dataset directory") and err.count("\n") == 1


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mpirnn.data", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_prepare_info_and_bad_input(csv_file, tmp_path):
    out = str(tmp_path / "ds")
    ok = run_cli("prepare", "--out", out, "--csv", str(csv_file), "--columns", "time,pressure",
                 "--window", "2")
    assert ok.returncode == 0, ok.stderr
    # 5 windows: the default --val-fraction 0.1 holds out the last (nearest whole number).
    assert "sequences: 4 rows" in ok.stdout and "1 shard(s)" in ok.stdout
    assert "val split: sequences: 1 rows" in ok.stdout and "normalized per column" in ok.stdout
    checked = run_cli("validate", out)
    assert checked.returncode == 0 and checked.stdout.count("\nok ") == 1, checked.stderr
    bad = run_cli("prepare", "--out", str(tmp_path / "ds2"), "--csv", str(csv_file),
                  "--columns", "time,presure")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("mpirnn.data: ") and "did you mean 'pressure'" in bad.stderr
