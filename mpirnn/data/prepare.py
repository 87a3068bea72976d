"""Write sharded HDF5 datasets (DESIGN.md section 3), and prepare them from a CSV or a .npy.

Input is streamed into shards block by block, so a corpus larger than memory works.
Each prepare validates what it wrote and writes manifest.json last, atomically: an
interrupted prepare leaves no manifest, hence nothing that looks like a usable dataset.
Text corpora live in corpus.py. Try it:
    python -m mpirnn.data prepare --out /tmp/ds --npy x.npy
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import pathlib
import re
from collections.abc import Iterator, Sequence

import h5py
import numpy as np

from mpirnn.data.manifest import (DATASET_NAME, MANIFEST_NAME, Manifest, Shard, shard_name,
                                  write_manifest)
from mpirnn.data.validate import (file_sha256, first_nonfinite, first_outside, row_blocks,
                                  validate_dataset)
from mpirnn.errors import DataError

TOKENS_SHARD_SIZE = 4_194_304     # stream steps per shard for tokens
FLOAT_SHARD_BYTES = 16 * 1024 * 1024
STREAM_CHUNK = 65536              # HDF5 chunk rows for streams: long contiguous windows
CSV_BLOCK_ROWS = 65536           # parsed rows held in memory at once
PathLike = str | os.PathLike


def default_shard_size(kind: str, row_shape: tuple[int, ...]) -> int:
    """Rows per shard: 4 Mi tokens, or about 16 MB of float32 for series and sequences."""
    if kind == "tokens":
        return TOKENS_SHARD_SIZE
    return max(1, FLOAT_SHARD_BYTES // (4 * math.prod(row_shape)))


class ShardWriter:
    """Append rows along axis 0; a new shard file starts every `shard_size` rows."""

    def __init__(self, root: pathlib.Path, kind: str, dtype: str, row_shape: tuple[int, ...],
                 shard_size: int | None = None, attrs: dict | None = None):
        self.root, self.dtype, self.row_shape = root, np.dtype(dtype), tuple(row_shape)
        self.shard_size = shard_size or default_shard_size(kind, self.row_shape)
        # Sequences are read row by row; streams in long windows of consecutive steps.
        rows = 1 if kind == "sequences" else min(STREAM_CHUNK, self.shard_size)
        self.chunks = (rows, *self.row_shape)
        self.attrs = dict(attrs or {})
        self.shards: list[Shard] = []
        self._file: h5py.File | None = None
        self._filled = 0

    def write(self, block: np.ndarray) -> None:
        """Append `block` (shape [k, *row_shape]), splitting it across shards as needed."""
        block = np.asarray(block, dtype=self.dtype)
        while len(block):
            if self._file is None:
                self._open()
            take = min(self.shard_size - self._filled, len(block))
            data = self._file[DATASET_NAME]
            data.resize(self._filled + take, axis=0)
            data[self._filled:self._filled + take] = block[:take]
            self._filled += take
            block = block[take:]
            if self._filled == self.shard_size:
                self._close()

    def finish(self) -> tuple[Shard, ...]:
        """Close the last shard; the shards written, with their checksums."""
        if self._file is not None:
            self._close()
        return tuple(self.shards)

    def _open(self) -> None:
        name = shard_name(len(self.shards))
        self._file = h5py.File(self.root / name, "w")
        data = self._file.create_dataset(DATASET_NAME, shape=(0, *self.row_shape),
                                         maxshape=(None, *self.row_shape), dtype=self.dtype,
                                         chunks=self.chunks)
        data.attrs.update(self.attrs)
        self._file.attrs.update(self.attrs)
        self._filled = 0

    def _close(self) -> None:
        name = pathlib.Path(self._file.filename).name
        self._file.close()
        self._file = None
        offset = sum(s.length for s in self.shards)
        self.shards.append(Shard(name, offset, self._filled, file_sha256(self.root / name)))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None and exc[0] is not None:
            self._file.close()   # leave the partial file; no manifest will point at it


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
        if re.fullmatch(r"shard-\d{5}\.h5", old.name):
            old.unlink()
    return root


def finish(root: pathlib.Path, writer: ShardWriter, empty: str, **fields) -> Manifest:
    """Validate the written shards, then write the manifest (last, atomically)."""
    shards = writer.finish()
    if not shards:
        raise DataError(empty)
    manifest = Manifest(root=root, length=sum(s.length for s in shards), shards=shards,
                        **{"vocab_size": None, "features": None, "seq_len": None, **fields})
    validate_dataset(manifest)
    write_manifest(manifest)
    return manifest


# ---- CSV ------------------------------------------------------------------------------

def prepare_csv(file: PathLike, out: PathLike, *, columns: Sequence[str],
                window: int | None = None, shard_size: int | None = None,
                force: bool = False) -> Manifest:
    """Chosen CSV columns as a float32 series [n, F], or with `window=T` as sequences
    [n // T, T, F] of non-overlapping windows (a trailing partial window is dropped)."""
    file = pathlib.Path(file)
    if not file.is_file():
        raise DataError(f"CSV file {file} does not exist: check --csv")
    if not columns:
        raise DataError("--columns is empty: name at least one CSV column, e.g. --columns a,b")
    check_positive(shard_size=shard_size, window=window)
    root = claim_output(out, force)
    features = len(columns)
    kind, row_shape = ("series", (features,)) if window is None else ("sequences",
                                                                      (window, features))
    rows = 0
    with ShardWriter(root, kind, "float32", row_shape, shard_size) as writer:
        pending = np.empty((0, features), np.float32)
        for block in _csv_blocks(file, list(columns)):
            rows += len(block)
            if window is None:
                writer.write(block)
                continue
            pending = np.concatenate([pending, block])
            whole = len(pending) // window * window
            writer.write(pending[:whole].reshape(-1, window, features))
            pending = pending[whole:]
    cols = ",".join(columns)
    if window is None:
        return finish(root, writer, f"{file} has no data rows: nothing to prepare",
                      kind="series", dtype="float32", features=features,
                      source=f"csv: {file.name} columns {cols}, {rows} rows")
    return finish(root, writer, f"{file} has {rows} data rows, fewer than --window {window}: "
                  f"use a smaller window", kind="sequences", dtype="float32",
                  features=features, seq_len=window,
                  source=f"csv: {file.name} columns {cols}, {rows} rows in windows of "
                         f"{window} ({rows % window} trailing rows dropped)")


def _column_indices(file: pathlib.Path, header: list[str], columns: list[str]) -> list[int]:
    """Header positions of `columns`, or a DataError listing the columns that exist."""
    names = [h.strip() for h in header]
    indices = []
    for col in columns:
        if col.strip() not in names:
            close = difflib.get_close_matches(col.strip(), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{file.name} has no column {col!r}{hint}; available: "
                            f"{', '.join(names)}")
        indices.append(names.index(col.strip()))
    return indices


def _csv_blocks(file: pathlib.Path, columns: list[str]) -> Iterator[np.ndarray]:
    """float32 blocks [k, F] of the chosen columns; every bad cell named by line and column."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:   # -sig: Excel's BOM
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{file} is empty: expected a header line naming the columns")
            indices = _column_indices(file, header, columns)
            rows: list[list[float]] = []
            for row in reader:
                if not row:
                    continue   # blank line
                rows.append([_cell(file, reader.line_num, row, i, col)
                             for i, col in zip(indices, columns)])
                if len(rows) == CSV_BLOCK_ROWS:
                    yield _finite_rows(file, rows, reader.line_num)
                    rows = []
            if rows:
                yield _finite_rows(file, rows, reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                        f"convert it to UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{file}: malformed CSV ({exc}): fix the file") from None


def _cell(file: pathlib.Path, line: int, row: list[str], i: int, column: str) -> float:
    if i >= len(row):
        raise DataError(f"{file.name} line {line}: only {len(row)} fields, column {column!r} "
                        f"is missing: fix or remove that line")
    text = row[i].strip()
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{file.name} line {line}, column {column!r}: {text!r} is not a "
                        f"number: fix or remove that line") from None
    if not math.isfinite(value):
        raise DataError(f"{file.name} line {line}, column {column!r} is {text}: fill or "
                        f"drop missing values before preparing")
    return value


def _finite_rows(file: pathlib.Path, rows: list[list[float]], last_line: int) -> np.ndarray:
    block = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(block).all():   # finite float64 that overflows float32
        raise DataError(f"{file.name}: a value near line {last_line} does not fit float32 "
                        f"(|x| > 3.4e38): rescale the column")
    return block


# ---- .npy -----------------------------------------------------------------------------

def prepare_npy(file: PathLike, out: PathLike, *, vocab_size: int | None = None,
                shard_size: int | None = None, force: bool = False) -> Manifest:
    """A .npy array: 1-D int -> tokens; 1-D float -> series F=1; [n, F] -> series;
    [n, T, F] -> sequences. Read through a memory map, block by block."""
    check_positive(shard_size=shard_size, vocab_size=vocab_size)
    file = pathlib.Path(file)
    array = _load_npy(file)
    is_int = array.dtype.kind in "iu"
    if vocab_size is not None and not (is_int and array.ndim == 1):
        raise DataError(f"--vocab-size applies to a 1-D integer array (tokens); {file.name} "
                        f"is {array.ndim}-D {array.dtype}: drop --vocab-size")
    if is_int and array.ndim == 1:
        vocab_size = _token_vocab(file, array, vocab_size)
        dtype, fields = ("uint8" if vocab_size <= 256 else "int32"), {"vocab_size": vocab_size}
        kind, row_shape = "tokens", ()
    else:
        dtype = "float32"
        shape = array.shape if array.ndim > 1 else (array.shape[0], 1)
        kind = "sequences" if len(shape) == 3 else "series"
        row_shape = tuple(shape[1:])
        fields = {"features": shape[-1], "seq_len": shape[1] if kind == "sequences" else None}
        if 0 in row_shape:
            raise DataError(f"{file.name} has shape {list(array.shape)}: a row is empty")
    root = claim_output(out, force)
    attrs = {"vocab_size": vocab_size} if kind == "tokens" else {}
    with ShardWriter(root, kind, dtype, row_shape, shard_size, attrs) as writer:
        for start, block in row_blocks(array):
            block = block.reshape(len(block), *row_shape).astype(dtype)
            if dtype == "float32" and (index := first_nonfinite(block)) is not None:
                where = ", ".join(map(str, (start + index[0], *index[1:])))
                raise DataError(f"{file.name}: non-finite value {block[index]} at index "
                                f"[{where}] (after conversion to float32): fill or drop it")
            writer.write(block)
    return finish(root, writer, f"{file.name} is empty: nothing to prepare", kind=kind,
                  dtype=dtype, **fields,
                  source=f"npy: {file.name} shape {list(array.shape)} dtype {array.dtype}")


def _load_npy(file: pathlib.Path) -> np.ndarray:
    if not file.is_file():
        raise DataError(f".npy file {file} does not exist: check --npy")
    with open(file, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz archive" if magic.startswith(b"PK") else "not a .npy file"
        raise DataError(f"{file} is {kind}: save one array with numpy.save(path, array)")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{file} is not a plain numeric .npy array ({exc}): save one "
                        f"with numpy.save") from None
    if array.dtype.kind not in "iuf" or not 1 <= array.ndim <= 3:
        raise DataError(f"{file.name} is a {array.ndim}-D {array.dtype} array: expected "
                        f"1-D int tokens, or 1-D/2-D/3-D numbers ([n], [n, F], [n, T, F])")
    return array


def _token_vocab(file: pathlib.Path, array: np.ndarray, vocab_size: int | None) -> int:
    """The vocabulary size (max + 1 unless given), after checking every id fits it."""
    if vocab_size is not None and vocab_size > 2**31:
        raise DataError(f"--vocab-size {vocab_size} does not fit int32 token ids (max 2**31)")
    limit = vocab_size if vocab_size is not None else 2**31   # int32 on disk
    high = -1
    for start, block in row_blocks(array):
        if (i := first_outside(block, limit)) is not None:
            raise DataError(f"{file.name}: token id {int(block[i])} at index {start + i} is "
                            f"outside [0, {limit}): fix the ids or pass a larger --vocab-size")
        high = max(high, int(block.max()))
    return vocab_size if vocab_size is not None else high + 1
