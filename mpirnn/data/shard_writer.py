"""Writing one split's rows into shard files, and making the output directory ready.

Each shard is closed, then its size, SHA-256 and sampled fingerprint are recorded, so
the manifest can later tell whether a file changed (fingerprint.py). Used by every
prepare; exercised by: python -m pytest -q tests/test_data_prepare.py
"""

from __future__ import annotations

import math
import os
import pathlib
import re

import h5py
import numpy as np

from mpirnn.data.fingerprint import file_digests
from mpirnn.data.manifest import DATASET_NAME, MANIFEST_NAME, SHARD_PREFIX, TRAIN, Shard, shard_name
from mpirnn.errors import DataError

TOKENS_SHARD_SIZE = 4_194_304     # stream steps per shard for tokens
FLOAT_SHARD_BYTES = 16 * 1024 * 1024
STREAM_CHUNK = 65536              # HDF5 chunk rows for streams: long contiguous windows
# Rows are chunked one row by at most ROW_TIME_CHUNK steps, so a rank that reads its rows
# and its time segment touches only the chunks holding them.
ROW_TIME_CHUNK = 1024
SIDE_CHUNK = 4096                 # rows per chunk of a per-row side dataset (lengths, labels)
PathLike = str | os.PathLike
_SHARD_FILE = re.compile(rf"({'|'.join(SHARD_PREFIX.values())})-\d{{5}}\.h5")


def default_shard_size(kind: str, row_shape: tuple[int, ...]) -> int:
    """Rows per shard: 4 Mi tokens, or about 16 MB of float32 for series and sequences."""
    if kind == "tokens":
        return TOKENS_SHARD_SIZE
    return max(1, FLOAT_SHARD_BYTES // (4 * math.prod(row_shape)))


def row_chunks(row_shape: tuple[int, ...]) -> tuple[int, ...]:
    """HDF5 chunks of a row dataset ([n, T] or [n, T, F]): one row, at most ROW_TIME_CHUNK steps."""
    return (1, min(row_shape[0], ROW_TIME_CHUNK), *row_shape[1:])


class ShardWriter:
    """Append rows along axis 0; a new shard file starts every `shard_size` rows.

    `side` names further datasets written beside `data`, one element per row, as
    {name: (dtype, row_shape, per_step)} (lengths and labels of labelled rows): per-step
    ones are chunked like the rows, the others in runs of SIDE_CHUNK rows.
    """

    def __init__(self, root: pathlib.Path, kind: str, dtype: str, row_shape: tuple[int, ...],
                 shard_size: int | None = None, attrs: dict | None = None, split: str = TRAIN,
                 side: dict[str, tuple[str, tuple[int, ...], bool]] | None = None):
        self.root, self.dtype, self.row_shape = root, np.dtype(dtype), tuple(row_shape)
        self.split = split
        self.shard_size = shard_size or default_shard_size(kind, self.row_shape)
        # Sequences are read row by row; streams in long windows of consecutive steps.
        rows = kind in ("sequences", "token_sequences")
        self.chunks = (row_chunks(self.row_shape) if rows
                       else (min(STREAM_CHUNK, self.shard_size), *self.row_shape))
        self.side = {name: (np.dtype(dtype), tuple(shape),
                            row_chunks(shape) if per_step else
                            (min(SIDE_CHUNK, self.shard_size), *shape))
                     for name, (dtype, shape, per_step) in (side or {}).items()}
        self.attrs = dict(attrs or {})
        self.shards: list[Shard] = []
        self._file: h5py.File | None = None
        self._filled = 0

    def write(self, block: np.ndarray, side: dict[str, np.ndarray] | None = None) -> None:
        """Append `block` (shape [k, *row_shape]) and its rows of each side dataset,
        splitting them across shards as needed."""
        block = np.asarray(block, dtype=self.dtype)
        # Only the datasets this writer was made with (a `next` dataset has no labels).
        side = {name: np.asarray(side[name], dtype=spec[0]) for name, spec in self.side.items()}
        while len(block):
            if self._file is None:
                self._open()
            take = min(self.shard_size - self._filled, len(block))
            for name, values in ((DATASET_NAME, block), *side.items()):
                data = self._file[name]
                data.resize(self._filled + take, axis=0)
                data[self._filled:self._filled + take] = values[:take]
            self._filled += take
            block = block[take:]
            side = {name: values[take:] for name, values in side.items()}
            if self._filled == self.shard_size:
                self._close()

    def finish(self) -> tuple[Shard, ...]:
        """Close the last shard; the shards written, with their sizes and digests."""
        if self._file is not None:
            self._close()
        return tuple(self.shards)

    def abandon(self) -> None:
        """Close an open shard after a failure; no manifest will point at it."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        name = shard_name(len(self.shards), self.split)
        self._file = h5py.File(self.root / name, "w")
        data = self._file.create_dataset(DATASET_NAME, shape=(0, *self.row_shape),
                                         maxshape=(None, *self.row_shape), dtype=self.dtype,
                                         chunks=self.chunks)
        data.attrs.update(self.attrs)
        self._file.attrs.update(self.attrs)
        for name, (dtype, shape, chunks) in self.side.items():
            self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                      dtype=dtype, chunks=chunks)
        self._filled = 0

    def _close(self) -> None:
        name = pathlib.Path(self._file.filename).name
        self._file.close()
        self._file = None
        offset = sum(s.length for s in self.shards)
        size, sha256, fingerprint = file_digests(self.root / name)
        self.shards.append(Shard(name, offset, self._filled, sha256, size, fingerprint))


def check_positive(**options: int | None) -> None:
    """Reject zero or negative sizes before anything is written."""
    for name, value in options.items():
        if value is not None and value <= 0:
            raise DataError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def claim_output(out: PathLike, force: bool) -> pathlib.Path:
    """Make `out` ready for new shards; refuse to replace a dataset unless `force`."""
    root = pathlib.Path(out)
    if root.exists() and not root.is_dir():
        raise DataError(f"--out {root} exists and is not a directory: choose another --out")
    manifest = root / MANIFEST_NAME
    if manifest.exists():
        if not force:
            raise DataError(f"{root} already holds a prepared dataset: pass --force to "
                            f"overwrite it, or choose another --out")
        manifest.unlink()   # first, so an interrupted overwrite never looks valid
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if _SHARD_FILE.fullmatch(old.name):
            old.unlink()
    return root
