"""Checks that the shards of a dataset are the files prepare wrote and hold what the
manifest says, value by value.

`prepare` runs this on what it wrote; the trainer runs it split over ranks
(`validate_dataset(manifest, part=rank, parts=size, scan_values=cfg.data.validate)`):
every shard's layout, size and content digest are always checked (fingerprint.py),
its values only with scan_values. Shards are scanned in blocks of at most
`BLOCK_ELEMENTS` values, so memory stays small whatever the shard size.
Try it: python -m mpirnn.data validate DIR
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Iterator

import h5py
import numpy as np

from mpirnn.data.fingerprint import file_sha256, verify_file  # noqa: F401 (file_sha256: kept importable here)
from mpirnn.data.manifest import Manifest, load_manifest
from mpirnn.data.validate_rows import check_row_layout, scan_rows
from mpirnn.errors import DataError

BLOCK_ELEMENTS = 4 * 1024 * 1024
_REPREPARE = "re-run python -m mpirnn.data prepare"


def validate_shard(manifest: Manifest, i: int, check_checksum: bool = False,
                   scan_values: bool = True, verify_files: bool = True) -> None:
    """Raise DataError unless shard `i` matches the manifest and holds only valid values.

    In order: the HDF5 dataset and its layout; with scan_values every value (NaN, ids
    past the vocabulary); with verify_files the file's size and digest as recorded at
    prepare (full SHA-256 for small files, else the sampled fingerprint; always the full
    SHA-256 with check_checksum). The layout and values come first because they say more
    precisely what is wrong than "the file changed".
    """
    shard = manifest.shards[i]
    path = manifest.shard_path(i)
    try:
        with h5py.File(path, "r") as f:
            dataset = _open_dataset(f, manifest, shard.file)
            _check_layout(dataset, manifest, shard.file, shard.length)
            labelled = manifest.has_lengths
            if labelled:
                check_row_layout(f, manifest, shard.file, shard.length)
            if scan_values and labelled:
                scan_rows(f, manifest, shard.file, shard.offset)
            elif scan_values:
                _scan_values(dataset, manifest, shard.file, shard.offset)
    except OSError as exc:
        raise DataError(f"{shard.file} is not a readable HDF5 file (truncated or corrupt?): "
                        f"{_REPREPARE} [{' '.join(str(exc).split())}]") from None
    if verify_files or check_checksum:
        verify_file(path, shard.file, size=shard.bytes, sha256=shard.sha256,
                    fingerprint=shard.fingerprint, full=check_checksum)


def validate_dataset(path_or_manifest: str | os.PathLike | Manifest, part: int = 0,
                     parts: int = 1, *, check_checksum: bool = False,
                     scan_values: bool = True, verify_files: bool = True) -> Manifest:
    """Validate shards i with i % parts == part, so `parts` processes share the work.

    Returns the manifest (of the train split when given a path). With the defaults every
    shard is checked (the serial case), its file verified against the manifest.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    manifest = (path_or_manifest if isinstance(path_or_manifest, Manifest)
                else load_manifest(path_or_manifest))
    for i in range(part, len(manifest.shards), parts):
        validate_shard(manifest, i, check_checksum=check_checksum, scan_values=scan_values,
                       verify_files=verify_files)
    return manifest


def _open_dataset(f: h5py.File, manifest: Manifest, name: str) -> h5py.Dataset:
    """The shard's dataset, or a DataError naming what the file holds instead."""
    dataset = f.get(manifest.dataset)
    if not isinstance(dataset, h5py.Dataset):
        found = ", ".join(sorted(f.keys())) or "nothing"
        raise DataError(f"{name}: no HDF5 dataset named {manifest.dataset!r} (found: "
                        f"{found}): {_REPREPARE}")
    return dataset


def _check_layout(dataset: h5py.Dataset, manifest: Manifest, name: str, length: int) -> None:
    """dtype, rank and shape as the manifest says; the vocabulary attribute if present."""
    want = np.dtype(manifest.dtype)
    got = dataset.dtype
    # Compare kind and size, not the dtype itself: a big-endian float32 is still float32.
    if got.kind != want.kind or got.itemsize != want.itemsize:
        raise DataError(f"{name}: dtype is {got}, manifest says {manifest.dtype}: {_REPREPARE}")
    expected = (length, *manifest.row_shape)
    layout = {"tokens": "[n]", "series": "[n, F]", "sequences": "[n, T, F]",
              "token_sequences": "[n, T]"}[manifest.kind]
    if dataset.ndim != len(expected):
        raise DataError(f"{name}: dataset has {dataset.ndim} dimension(s), a {manifest.kind} "
                        f"dataset has {len(expected)} {layout}: {_REPREPARE}")
    if dataset.shape != expected:
        raise DataError(f"{name}: dataset shape is {list(dataset.shape)}, manifest.json "
                        f"expects {list(expected)} {layout}: {_REPREPARE}")
    vocab = dataset.attrs.get("vocab_size")
    if manifest.is_tokens and vocab is not None and int(vocab) != manifest.vocab_size:
        raise DataError(f"{name}: vocab_size attribute {int(vocab)} differs from manifest.json "
                        f"({manifest.vocab_size}): {_REPREPARE}")


def row_blocks(array) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) blocks of at most BLOCK_ELEMENTS values along axis 0.

    Works on numpy arrays (memory maps included) and h5py datasets alike.
    """
    rows = max(1, BLOCK_ELEMENTS // max(1, math.prod(array.shape[1:])))
    for start in range(0, array.shape[0], rows):
        yield start, np.asarray(array[start:start + rows])


def first_nonfinite(block: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN or Inf in `block`, or None."""
    bad = np.flatnonzero(~np.isfinite(block))
    return None if not bad.size else tuple(map(int, np.unravel_index(int(bad[0]), block.shape)))


def first_outside(block: np.ndarray, high: int) -> int | None:
    """Index of the first value outside [0, high) in a 1-D integer block, or None."""
    bad = np.flatnonzero((block < 0) | (block >= high))
    return int(bad[0]) if bad.size else None


def _scan_values(dataset: h5py.Dataset, manifest: Manifest, name: str, offset: int) -> None:
    """Find the first non-finite float or out-of-vocabulary token, block by block."""
    for start, block in row_blocks(dataset):
        if manifest.kind == "tokens":
            i = first_outside(block, manifest.vocab_size)
            if i is not None:
                raise DataError(f"{name}: token id {int(block[i])} at step "
                                f"{offset + start + i} is outside the vocabulary (vocab_size="
                                f"{manifest.vocab_size}): {_REPREPARE} with a larger "
                                f"--vocab-size or fix the input")
        elif (index := first_nonfinite(block)) is not None:
            value = block[index]
            raise DataError(f"{name}: {'NaN' if np.isnan(value) else value} at "
                            f"{_where(manifest, offset + start + index[0], index)}: "
                            f"fix the input (fill or drop missing values) and {_REPREPARE}")


def _where(manifest: Manifest, row: int, index: tuple) -> str:
    """Human position of a value: 'step 12, feature 0' or 'row 3, step 5, feature 1'."""
    if manifest.kind == "series":
        return f"step {row}, feature {int(index[1])}"
    return f"row {row}, step {int(index[1])}, feature {int(index[2])}"


def dataset_bytes(manifest: Manifest) -> int:
    """Total size of the shard files on disk (for `info`)."""
    return sum(pathlib.Path(manifest.shard_path(i)).stat().st_size
               for i in range(len(manifest.shards)))
