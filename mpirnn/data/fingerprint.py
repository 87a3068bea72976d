"""Did a shard file change after prepare? Its size, and its SHA-256 or a sampled fingerprint.

`prepare` records each shard's byte size, full SHA-256 and a fingerprint (SHA-256 of the
size and of FINGERPRINT_BLOCKS fixed, evenly spaced blocks). The trainer checks every
shard at start (`validate_dataset`, shards shared over the ranks): the size, then the
full SHA-256 when the file is at most FULL_HASH_LIMIT bytes, else the fingerprint.

Why 256 MiB: hashing a shard file runs at about 400 MB/s on the 2-core development machine
(128 MB of shards, from the page cache, in 0.35 s), so a shard at the limit costs well
under a second per rank per start, and the shards are shared over the ranks. Default
shards (4 Mi tokens, about 16 MB of floats) are far below it: every byte of them is
checked. Above it, the fingerprint reads 4 MiB whatever the size, and finds truncation,
appended or rewritten files and damage in the sampled blocks; a single flipped byte
elsewhere is only found by `python -m mpirnn.data validate` (always the full SHA-256).
Exercised by: python -m pytest -q tests/test_data_fingerprint.py
"""

from __future__ import annotations

import hashlib
import os
import re

from mpirnn.errors import DataError

FULL_HASH_LIMIT = 256 * 1024 * 1024
FINGERPRINT_BLOCKS = 64
FINGERPRINT_BLOCK_BYTES = 64 * 1024
PIECE = 1 << 20
_SCHEME = re.compile(r"sha256-(\d+)x(\d+):([0-9a-f]{64})")
_REPREPARE = "re-run python -m mpirnn.data prepare"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(PIECE), b""):
            digest.update(piece)
    return digest.hexdigest()


def sampled_fingerprint(path: str | os.PathLike, blocks: int = FINGERPRINT_BLOCKS,
                        block_bytes: int = FINGERPRINT_BLOCK_BYTES) -> str:
    """'sha256-{blocks}x{block_bytes}:HEX': the size and `blocks` evenly spaced blocks.

    The first and last blocks are always among them (HDF5's superblock and the end of
    the data). A file no bigger than the blocks together is hashed whole. The scheme is
    part of the string, so a fingerprint stays checkable if the defaults change.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        if size <= blocks * block_bytes:
            for piece in iter(lambda: f.read(PIECE), b""):
                digest.update(piece)
        else:
            for i in range(blocks):
                f.seek(i * (size - block_bytes) // max(1, blocks - 1))
                digest.update(f.read(block_bytes))
    return f"sha256-{blocks}x{block_bytes}:{digest.hexdigest()}"


def file_digests(path: str | os.PathLike) -> tuple[int, str, str]:
    """(bytes, sha256, fingerprint) of a shard, as prepare records them."""
    return os.path.getsize(path), file_sha256(path), sampled_fingerprint(path)


def verify_file(path: str | os.PathLike, name: str, *, size: int | None, sha256: str,
                fingerprint: str | None, full: bool = False) -> None:
    """Raise DataError if the file is not the one prepare wrote.

    Checks what the manifest records (a version-1 manifest has no size or fingerprint):
    the size; then the full SHA-256 if `full`, if the file is small (FULL_HASH_LIMIT) or
    if no usable fingerprint is recorded; else the sampled fingerprint.
    """
    actual = os.path.getsize(path)
    changed = f"the file changed after prepare: {_REPREPARE}"
    if size is not None and actual != size:
        raise DataError(f"{name} is {actual} bytes but manifest.json recorded {size} "
                        f"(truncated or rewritten): {changed}")
    scheme = _SCHEME.fullmatch(fingerprint or "")
    if full or actual <= FULL_HASH_LIMIT or scheme is None:
        if file_sha256(path) != sha256:
            raise DataError(f"{name}: checksum (SHA-256) does not match manifest.json: "
                            f"{changed}")
        return
    blocks, block_bytes = int(scheme[1]), int(scheme[2])
    if sampled_fingerprint(path, blocks, block_bytes) != fingerprint:
        raise DataError(f"{name}: fingerprint (SHA-256 of {blocks} sampled blocks) does not "
                        f"match manifest.json: {changed}")
