"""Open shard files of one split, kept open for the run: what both readers share.

`Reader` (streams and unlabelled rows, reader.py) and `RowReader` (labelled rows,
row_reader.py) open a shard the first time a read needs it and close them all at the end.
Exercised by: python -m pytest -q tests/test_sampler.py tests/test_data_labelled_npy.py
"""

from __future__ import annotations

import h5py
import numpy as np

from mpirnn.data.manifest import Manifest
from mpirnn.errors import DataError


class ShardFiles:
    """Shard `i` of a split as an open h5py.File, opened on first use."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.starts = np.array([s.offset for s in manifest.shards], dtype=np.int64)
        self._files: dict[int, h5py.File] = {}

    def file(self, index: int) -> h5py.File:
        if index not in self._files:
            path = self.manifest.shard_path(index)
            try:
                self._files[index] = h5py.File(path, "r")
            except OSError as exc:
                raise DataError(f"{path.name}: cannot open ({exc}); re-run prepare") from None
        return self._files[index]

    def shard_of(self, rows) -> np.ndarray:
        """The shard index holding each of `rows` (split row ids)."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
