"""Reading one rank's part of a batch from a sharded HDF5 dataset.

A rank reads only its rows and its time segment (plus the one extra step its targets
need), never the whole dataset. Shard files stay open for the run.

Series and sequences whose manifest records normalization come out of `window` and
`block` normalized, (x - mean) / std per column with the train split's statistics, so
training sees normalized inputs and targets; `manifest.denormalize` undoes it.
`read_span` and `read_row` return the stored values (data units).
Exercised by: python -m pytest -q tests/test_data_normalization.py tests/test_sampler.py
"""

from __future__ import annotations

import h5py
import numpy as np
import torch

from mpirnn.data.manifest import Manifest
from mpirnn.data.shard_files import ShardFiles


class Reader:
    """Windows of one split of a dataset (the split `manifest` describes)."""

    def __init__(self, manifest: Manifest, stride: int | None = None, origin: int = 0, end: int | None = None):
        """`stride`: steps between the starts of a stream's windows (None: seq_len, non-overlapping);
        `origin`: the first window's start (the steps before it are read only as lagged inputs);
        `end`: no window reaches step `end` or later (data.holdout; None: the stream's end)."""
        self.manifest, self.stride, self.origin = manifest, stride, origin
        self.end = manifest.length if end is None else end
        self.normalization = manifest.normalization
        self._open = ShardFiles(manifest)
        self._starts = self._open.starts

    def close(self) -> None:
        self._open.close()

    def _shard(self, index: int) -> h5py.Dataset:
        return self._open.file(index)[self.manifest.dataset]

    def n_windows(self, seq_len: int) -> int:
        """How many training sequences of seq_len steps (+1 target step) the dataset holds."""
        m = self.manifest
        if m.is_stream:
            stride = self.stride or seq_len
            return max(0, (self.end - self.origin - 1 - seq_len) // stride + 1)
        return m.length if seq_len + 1 <= m.seq_len else 0

    def read_span(self, start: int, stop: int) -> np.ndarray:
        """Stream steps [start, stop) across shard boundaries."""
        first = int(np.searchsorted(self._starts, start, side="right") - 1)
        pieces = []
        index = first
        while start < stop:
            shard = self.manifest.shards[index]
            local = start - shard.offset
            take = min(stop - start, shard.length - local)
            pieces.append(self._shard(index)[local:local + take])
            start += take
            index += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def read_row(self, row: int, t0: int, t1: int) -> np.ndarray:
        index = int(np.searchsorted(self._starts, row, side="right") - 1)
        return self._shard(index)[row - self.manifest.shards[index].offset, t0:t1]

    def start(self, window: int, seq_len: int) -> int:
        """The stream step a window starts at."""
        return self.origin + window * (self.stride or seq_len)

    def window(self, window: int, seq_len: int, t0: int, t1: int) -> np.ndarray:
        """Steps [t0, t1 + 1) of a window, normalized if recorded: inputs [:-1], targets [1:]."""
        if self.manifest.is_stream:
            base = self.start(window, seq_len)
            values = self.read_span(base + t0, base + t1 + 1)
        else:
            values = self.read_row(window, t0, t1 + 1)
        # float64 arithmetic, rounded once when block() converts to the model's dtype.
        return values if self.normalization is None else self.normalization.normalize(values)

    def block(self, windows, seq_len: int, t0: int, t1: int, dtype=torch.float32) -> torch.Tensor:
        """Steps [t0, t1 + 1) of the given windows, as one CPU tensor (inputs are [:, :-1], targets [:, 1:])."""
        block = torch.from_numpy(np.stack([self.window(int(w), seq_len, t0, t1) for w in windows]))
        return block.long() if self.manifest.kind == "tokens" else block.to(dtype)
