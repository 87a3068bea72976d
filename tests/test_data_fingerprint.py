"""A shard changed after prepare is refused by the check the trainer runs (issue: checksums).

The trainer calls validate_dataset(manifest, part=rank, parts=size, scan_values=...) on every
rank; these tests call it the same way. Plain pytest, no MPI:
    cd /work/main && .venv/bin/python -m pytest -q tests/test_data_fingerprint.py
"""

import json

import h5py
import numpy as np
import pytest

from mpirnn.data import fingerprint
from mpirnn.data.manifest import load_manifest
from mpirnn.data.prepare import prepare_npy
from mpirnn.data.validate import validate_dataset
from mpirnn.errors import DataError


@pytest.fixture
def tokens(tmp_path):
    """Byte tokens in three train shards and one val shard."""
    ids = np.random.default_rng(0).integers(0, 256, 4_000).astype(np.int64)
    np.save(tmp_path / "t.npy", ids)
    return prepare_npy(tmp_path / "t.npy", tmp_path / "ds", vocab_size=256, shard_size=1_500)


def data_offset(path) -> int:
    """Where the first chunk of the shard's values starts in the file."""
    with h5py.File(path, "r") as f:
        return f["data"].id.get_chunk_info(0).byte_offset


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_prepare_records_size_sha256_and_fingerprint(tokens):
    for shard in tokens.shards + load_manifest(tokens.root, split="val").shards:
        path = tokens.root / shard.file
        assert shard.bytes == path.stat().st_size
        assert shard.sha256 == fingerprint.file_sha256(path)
        assert shard.fingerprint == fingerprint.sampled_fingerprint(path)
        assert shard.fingerprint.startswith("sha256-64x65536:")


@pytest.mark.parametrize("scan_values", [True, False])
def test_one_flipped_data_byte_is_refused(tokens, scan_values):
    # Still a valid HDF5 file with ids inside the vocabulary: only the checksum can tell.
    shard = tokens.shard_path(1)
    flip_byte(shard, data_offset(shard) + 10)
    validate_dataset(tokens, part=0, parts=2, scan_values=scan_values)   # shards 0 and 2: fine
    with pytest.raises(DataError, match=r"shard-00001\.h5: checksum \(SHA-256\) does not match "
                                        r"manifest.json: the file changed after prepare: re-run "
                                        r"python -m mpirnn.data prepare"):
        validate_dataset(tokens, part=1, parts=2, scan_values=scan_values)


def test_a_longer_or_shorter_file_is_named_by_its_size(tokens):
    shard = tokens.shard_path(2)
    with open(shard, "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(DataError, match=rf"shard-00002\.h5 is {tokens.shards[2].bytes + 16} "
                                        rf"bytes but manifest.json recorded "
                                        rf"{tokens.shards[2].bytes} .*changed after prepare"):
        validate_dataset(tokens, scan_values=False)


def test_val_shards_are_verified_too(tokens):
    val = load_manifest(tokens.root, split="val")
    flip_byte(val.shard_path(0), data_offset(val.shard_path(0)))
    validate_dataset(tokens)
    with pytest.raises(DataError, match=r"val-00000\.h5: checksum"):
        validate_dataset(val, scan_values=False)


def test_large_shards_use_the_sampled_fingerprint(tokens, monkeypatch):
    # Every shard counts as large: the fingerprint decides. Shards here are smaller than the
    # 64 blocks, so the fingerprint covers the whole file and still finds one flipped byte.
    monkeypatch.setattr(fingerprint, "FULL_HASH_LIMIT", 0)
    calls = []
    monkeypatch.setattr(fingerprint, "file_sha256", lambda path: calls.append(path) or "x")
    validate_dataset(tokens)
    assert calls == []   # the full hash was never needed
    shard = tokens.shard_path(0)
    flip_byte(shard, data_offset(shard) + 3)
    with pytest.raises(DataError, match=r"shard-00000\.h5: fingerprint \(SHA-256 of 64 sampled "
                                        r"blocks\) does not match.*changed after prepare"):
        validate_dataset(tokens)


def test_the_fingerprint_samples_blocks_and_full_validate_finds_the_rest(tmp_path, monkeypatch):
    # 4 blocks of 64 bytes out of a ~20 kB shard: a flip inside a sampled block is found at
    # start; one between them only by the full SHA-256 of `python -m mpirnn.data validate`.
    monkeypatch.setattr(fingerprint, "FINGERPRINT_BLOCKS", 4)
    monkeypatch.setattr(fingerprint, "FINGERPRINT_BLOCK_BYTES", 64)
    monkeypatch.setattr(fingerprint.sampled_fingerprint, "__defaults__", (4, 64))
    np.save(tmp_path / "t.npy", np.arange(20_000) % 256)
    manifest = prepare_npy(tmp_path / "t.npy", tmp_path / "ds", val_fraction=0)
    shard = manifest.shard_path(0)
    size = shard.stat().st_size
    assert manifest.shards[0].fingerprint.startswith("sha256-4x64:") and size > 4 * 64
    monkeypatch.setattr(fingerprint, "FULL_HASH_LIMIT", 0)
    step = (size - 64) // 3
    unsampled = step + 200          # between the second and third block
    flip_byte(shard, unsampled)
    validate_dataset(manifest, scan_values=False)   # the cheap check misses it: documented
    with pytest.raises(DataError, match="checksum"):
        validate_dataset(manifest, scan_values=False, check_checksum=True)
    flip_byte(shard, unsampled)     # restore
    flip_byte(shard, step + 10)     # inside the second sampled block
    with pytest.raises(DataError, match="fingerprint"):
        validate_dataset(manifest, scan_values=False)


def test_a_version_1_manifest_checks_what_it_has(tokens):
    # Written before sizes and fingerprints existed: the SHA-256 it holds is still checked.
    path = tokens.root / "manifest.json"
    obj = json.loads(path.read_text())
    obj["version"] = 1
    for key in ("splits", "val_fraction", "normalization", "fill"):
        del obj[key]
    for shard in obj["shards"]:
        del shard["bytes"], shard["fingerprint"]
    path.write_text(json.dumps(obj))
    old = load_manifest(tokens.root)
    assert old.shards[0].bytes is None and old.splits == ("train",)
    validate_dataset(old, scan_values=False)
    flip_byte(old.shard_path(2), data_offset(old.shard_path(2)))
    with pytest.raises(DataError, match=r"shard-00002\.h5: checksum"):
        validate_dataset(old, scan_values=False)
