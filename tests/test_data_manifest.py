"""The manifest's versions: older ones still load, a newer one asks for a newer mpirnn.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_data_manifest.py
"""

import json

import numpy as np
import pytest

from mpirnn.data import __main__ as data_cli
from mpirnn.data.manifest import UNLABELLED_VERSION, VERSION, load_manifest
from mpirnn.data.prepare import prepare_npy
from mpirnn.data.reader import Reader
from mpirnn.data.validate import validate_dataset
from mpirnn.errors import DataError


@pytest.fixture
def series(tmp_path):
    values = np.arange(200, dtype=np.float32).reshape(100, 2)
    np.save(tmp_path / "s.npy", values)
    return prepare_npy(tmp_path / "s.npy", tmp_path / "ds", shard_size=40)


def rewrite(root, change) -> None:
    path = root / "manifest.json"
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def as_version_1(obj: dict) -> None:
    """What prepare wrote before splits, sizes, fingerprints and normalization."""
    obj["version"] = 1
    for key in ("splits", "val_fraction", "normalization", "fill"):
        obj.pop(key)
    for shard in obj["shards"]:
        shard.pop("bytes"), shard.pop("fingerprint")


def test_a_newer_manifest_asks_to_upgrade_mpirnn_not_to_reprepare(series):
    rewrite(series.root, lambda obj: obj.update(version=VERSION + 1))
    with pytest.raises(DataError, match=rf"version {VERSION + 1} is newer than this mpirnn reads "
                                        rf"\(1 to {VERSION}\): upgrade mpirnn") as caught:
        load_manifest(series.root)
    assert "re-run prepare" not in str(caught.value)


@pytest.mark.parametrize("version", [0, "2", None, True])
def test_a_malformed_version_asks_to_reprepare(series, version):
    rewrite(series.root, lambda obj: obj.update(version=version))
    with pytest.raises(DataError, match="is not a manifest version.*re-run prepare"):
        load_manifest(series.root)


def test_a_version_1_manifest_loads_and_reads_raw_values(series):
    rewrite(series.root, as_version_1)
    old = load_manifest(series.root)
    assert (old.splits, old.normalization, old.fill, old.val_fraction) == (("train",), None, None,
                                                                            None)
    assert old.length == series.length and old.shards[0].fingerprint is None
    validate_dataset(old)
    # No statistics recorded: the Reader hands out the stored values, as before.
    window = Reader(old).window(0, 10, 0, 9)
    np.testing.assert_array_equal(window, np.arange(20, dtype=np.float32).reshape(10, 2))
    with pytest.raises(DataError, match=r"has no 'val' split \(it holds: train\).*--val-fraction"):
        load_manifest(series.root, split="val")


def test_splits_are_listed_and_each_loads(series):
    assert series.splits == ("train", "val") and series.split == "train"
    val = load_manifest(series.root, split="val")
    assert (val.split, val.length, val.normalization) == ("val", 10, series.normalization)
    assert load_manifest(series.root / "manifest.json") == series
    with pytest.raises(DataError, match=r"no 'test' split \(it holds: train, val\)"):
        load_manifest(series.root, split="test")


def test_version_2_fields_are_written(series):
    # Unlabelled datasets stay version 2 (older mpirnn reads them); labelled ones are 3.
    obj = json.loads((series.root / "manifest.json").read_text())
    assert obj["version"] == UNLABELLED_VERSION == 2 and VERSION == 3
    assert "task" not in obj
    assert obj["val_fraction"] == 0.1 and obj["fill"] is None
    assert set(obj["normalization"]) == {"mean", "std"} and len(obj["normalization"]["std"]) == 2
    assert obj["length"] == 90 and list(obj["splits"]) == ["val"]
    assert obj["splits"]["val"]["length"] == 10
    assert [s["file"] for s in obj["splits"]["val"]["shards"]] == ["val-00000.h5"]
    assert {"bytes", "sha256", "fingerprint"} <= set(obj["shards"][0])


@pytest.mark.parametrize("change, message", [
    (lambda o: o.update(normalization={"mean": [0.0], "std": [1.0]}), "normalization.mean must be 2"),
    (lambda o: o.update(normalization={"mean": [0, 0], "std": [1, -1]}), "negative"),
    (lambda o: o.update(fill={"method": "guess"}), "fill must be an object"),
    (lambda o: o.update(splits={"train": {}}), "splits must map split names other than 'train'"),
    (lambda o: o.update(val_fraction=1.5), r"val_fraction must be a number in \[0, 1\)"),
    (lambda o: o["shards"][0].update(bytes=-1), "bytes must be a non-negative integer"),
])
def test_malformed_new_fields(series, change, message):
    rewrite(series.root, change)
    with pytest.raises(DataError, match=message):
        load_manifest(series.root)


def test_cli_newer_manifest_is_one_line(series, capsys):
    rewrite(series.root, lambda obj: obj.update(version=VERSION + 1))
    assert data_cli.main(["info", str(series.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "upgrade mpirnn" in err
