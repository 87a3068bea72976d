"""Reading labelled rows: a rank's rows and time segment, with their labels and lengths.

    reader = RowReader(load_manifest(path))           # the train split; split="val" for val
    batch = reader.read(rows, t0, t1)                 # rows: global row ids of the split
    batch.inputs   [b, t1 - t0, F] float (normalized, 0 at padded steps) or [b, t1 - t0] ids
    batch.labels   tag: [b, t1 - t0] class ids (LABEL_FILL = -1 at padded steps);
                   classify: [b] class ids; regress: [b, K] targets, normalized
    batch.lengths  [b] each row's true length (whole row, not clipped to the segment)
    batch.valid(t0)  [b, t1 - t0] True at the valid steps of the segment

A rank reads only its rows and its segment: shards are chunked one row by up to 1024 steps
(shard_writer.py), and `inputs=False` / `labels=False` skip what a pipeline stage does not
need (the first stage reads inputs, the last labels; every stage gets lengths). All
lengths of the split are loaded once (4 bytes a row), for masks and length buckets.
Nothing here knows about ranks or MPI: callers pass the rows and the segment they own.
Exercised by: python -m pytest -q tests/test_data_labelled_npy.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mpirnn.data.labels import step_mask
from mpirnn.data.manifest import LABELS, LENGTHS, Manifest
from mpirnn.data.shard_files import ShardFiles
from mpirnn.errors import DataError


@dataclass(frozen=True)
class RowBatch:
    """Some rows' segment [t0, t1): inputs and labels (None where not read), lengths."""

    inputs: torch.Tensor | None
    labels: torch.Tensor | None
    lengths: torch.Tensor

    def valid(self, t0: int, t1: int) -> torch.Tensor:
        """[b, t1 - t0] booleans: the steps of [t0, t1) within each row's length."""
        return torch.arange(t0, t1)[None, :] < self.lengths[:, None]


class RowReader:
    """One split of a labelled dataset (the split `manifest` describes), read by global row."""

    def __init__(self, manifest: Manifest):
        if not manifest.has_lengths:
            raise DataError(f"{manifest.root} holds {manifest.kind} without lengths: read it "
                            f"with mpirnn.data.reader.Reader")
        self.manifest = manifest
        self._open = ShardFiles(manifest)
        self.lengths = np.concatenate([self._open.file(i)[LENGTHS][...]
                                       for i in range(len(manifest.shards))]).astype(np.int64)

    def close(self) -> None:
        self._open.close()

    def read(self, rows, t0: int = 0, t1: int | None = None, *, inputs: bool = True,
             labels: bool = True, dtype=torch.float32) -> RowBatch:
        """Rows `rows` (global ids of this split, any order, repeats allowed), steps [t0, t1)."""
        m = self.manifest
        t1 = m.seq_len if t1 is None else t1
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not 0 <= t0 <= t1 <= m.seq_len:
            raise ValueError(f"time range [{t0}, {t1}) is not inside [0, {m.seq_len})")
        if rows.size and (rows.min() < 0 or rows.max() >= m.length):
            raise ValueError(f"rows must be in [0, {m.length}), got {rows.min()}..{rows.max()}")
        lengths = self.lengths[rows]
        valid = step_mask(lengths, m.seq_len)[:, t0:t1]
        x = y = None
        if inputs:
            x = self._gather(m.dataset, rows, (slice(t0, t1),))
            if m.normalization is not None:
                x = m.normalization.normalize(x)
            x = np.where(valid if m.is_tokens else valid[..., None], x, 0)
            x = torch.from_numpy(x).long() if m.is_tokens else torch.from_numpy(x).to(dtype)
        if labels and m.task_spec.labelled:   # token rows of task next have none
            y = self._read_labels(rows, t0, t1, dtype)
        return RowBatch(x, y, torch.from_numpy(lengths))

    def all_labels(self) -> np.ndarray:
        """Every row's labels of the split, as stored (for class-weighted counts)."""
        return self._gather(LABELS, np.arange(self.manifest.length), ())

    def _read_labels(self, rows: np.ndarray, t0: int, t1: int, dtype) -> torch.Tensor:
        spec = self.manifest.task_spec
        if spec.task == "tag":
            return torch.from_numpy(self._gather(LABELS, rows, (slice(t0, t1),))).long()
        y = self._gather(LABELS, rows, ())
        if spec.task == "classify":
            return torch.from_numpy(y).long()
        if spec.target_normalization is not None:
            y = spec.target_normalization.normalize(y)
        return torch.from_numpy(np.asarray(y)).to(dtype)

    def _gather(self, name: str, rows: np.ndarray, rest: tuple) -> np.ndarray:
        """dataset[rows, *rest] across shards: each shard read once, rows in increasing order
        (as h5py needs), then put back in the order asked."""
        unique, inverse = np.unique(rows, return_inverse=True)
        shard_of = self._open.shard_of(unique)
        pieces = []
        for index in np.unique(shard_of):
            local = unique[shard_of == index] - self._open.starts[index]
            pieces.append(self._open.file(int(index))[name][(local, *rest)])
        if not pieces:   # no rows: an empty array of the right shape and dtype
            return self._open.file(0)[name][(slice(0, 0), *rest)]
        return np.concatenate(pieces)[inverse]
