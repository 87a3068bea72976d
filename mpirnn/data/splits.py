"""Train and val splits: the final fraction of a stream (or of the rows) is held out.

`prepare` knows how many rows it will write before it writes any (it counts first where
the input does not say), so the split point is fixed up front: the first rows go to the
train shards (shard-*.h5), the rest to the val shards (val-*.h5) in the same directory.
The train split's per-column moments are gathered on the way, for normalization.
Exercised by: python -m pytest -q tests/test_data_splits.py
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import numpy as np

from mpirnn.data.fill import FillReport
from mpirnn.data.manifest import TRAIN, Manifest, write_manifest
from mpirnn.data.normalization import RunningMoments
from mpirnn.data.shard_writer import ShardWriter
from mpirnn.data.validate import validate_dataset
from mpirnn.errors import DataError

VAL = "val"
DEFAULT_VAL_FRACTION = 0.1
# A stream window needs an input step and its target; a row of a sequences dataset is whole.
MIN_ROWS = {"tokens": 2, "series": 2, "sequences": 1}


def check_val_fraction(fraction: float) -> None:
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
        raise DataError(f"--val-fraction must be a number in [0, 1) (0: no val split), "
                        f"got {fraction!r}")


def val_length(total: int, fraction: float, kind: str) -> int:
    """Rows held out for val: the nearest whole number to fraction * total, checked."""
    check_val_fraction(fraction)
    if fraction == 0:
        return 0
    held = math.floor(fraction * total + 0.5)
    unit = "rows" if kind == "sequences" else "steps"
    need = MIN_ROWS[kind]
    why = "" if kind == "sequences" else " (an input step and its target)"
    if held < need:
        raise DataError(f"--val-fraction {fraction} of {total} {unit} gives a val split of "
                        f"{held} {unit}; it needs at least {need}{why}: use a larger "
                        f"--val-fraction, more data, or --val-fraction 0 for no val split")
    if total - held < need:
        raise DataError(f"--val-fraction {fraction} of {total} {unit} leaves {total - held} "
                        f"{unit} to train on; it needs at least {need}{why}: use a smaller "
                        f"--val-fraction")
    return held


class SplitWriter:
    """Routes the first rows to the train shards and the last `val_rows` to the val shards."""

    def __init__(self, root: pathlib.Path, kind: str, dtype: str, row_shape: tuple[int, ...],
                 *, total: int, val_fraction: float, empty: str, shard_size: int | None = None,
                 attrs: dict | None = None):
        if total == 0:
            raise DataError(empty)
        self.val_rows = val_length(total, val_fraction, kind)
        self.train_rows = total - self.val_rows
        self.dtype = np.dtype(dtype)
        self.writers = {TRAIN: ShardWriter(root, kind, dtype, row_shape, shard_size, attrs)}
        if self.val_rows:
            self.writers[VAL] = ShardWriter(root, kind, dtype, row_shape, shard_size, attrs, VAL)
        self.moments = None if kind == "tokens" else RunningMoments(row_shape[-1])
        self.written = 0

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=self.dtype)
        if self.written + len(block) > self.train_rows + self.val_rows:
            raise self._changed(self.written + len(block))
        take = max(0, min(self.train_rows - self.written, len(block)))
        if take:
            self.writers[TRAIN].write(block[:take])
            if self.moments is not None:
                self.moments.add(block[:take])   # the stored (float32) values
        if take < len(block):
            self.writers[VAL].write(block[take:])
        self.written += len(block)

    def finish(self) -> dict[str, tuple]:
        """{split: shards}; refuses if the input did not hold the rows counted first."""
        if self.written != self.train_rows + self.val_rows:
            raise self._changed(self.written)
        return {name: writer.finish() for name, writer in self.writers.items()}

    def _changed(self, rows: int) -> DataError:
        return DataError(f"the input changed while it was prepared ({rows} rows read, "
                         f"{self.train_rows + self.val_rows} counted before): prepare it again")

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            for writer in self.writers.values():
                writer.abandon()   # partial files stay; no manifest will point at them


def finish(root: pathlib.Path, writer: SplitWriter, *, val_fraction: float,
           columns: Sequence[str] | None = None, fill: FillReport | None = None,
           **fields) -> Manifest:
    """Validate every split written, then write the manifest (last, atomically).

    Returns the train split's Manifest; `load_manifest(root, split="val")` gives the other.
    """
    shards = writer.finish()
    normalization = None
    if writer.moments is not None:
        names = columns or [str(j) for j in range(writer.moments.mean.size)]
        normalization = writer.moments.result(names)
    return finish_splits(root, shards, val_fraction=float(val_fraction),
                         normalization=normalization, fill=fill, **fields)


def finish_splits(root: pathlib.Path, shards: dict[str, tuple], **fields) -> Manifest:
    """Validate the shards of every split ({split: shards}, train first), then write the
    manifest (last, atomically); `fields` are the dataset's Manifest fields."""
    fields = {"vocab_size": None, "features": None, "seq_len": None, **fields}
    manifests = [Manifest(root=root, length=sum(s.length for s in part), shards=part,
                          split=name, splits=tuple(shards), **fields)
                 for name, part in shards.items()]
    for manifest in manifests:
        # Just hashed by the writer: scan the values, skip hashing the files again.
        validate_dataset(manifest, verify_files=False)
    write_manifest(*manifests)
    return manifests[0]
