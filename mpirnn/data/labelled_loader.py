"""This rank's batches of a labelled dataset (tag, classify, regress): rows of different lengths.

The global batch of a step is a function of (train.seed, step) and the rows' lengths, never of
the grid: with data.bucket (the default) rows of similar length are grouped
(mpirnn/data/sampler.py `bucketed_epoch`), and every batch lists its rows longest first. A rank
reads its rows and time segment (mpirnn/data/row_reader.py): inputs on the first pipeline stage,
labels on the last; every stage knows its rows' lengths, which bound the work of each unit.

A batch's summed loss is divided by the global count of its valid elements (`norm`), so any
grid gives the serial loss. `LabelledEvaluationLoader` reads a split in order for evaluation.
    python -m pytest -q tests/test_labelled_loader.py
"""

from __future__ import annotations

import numpy as np
import torch

from mpirnn import faults
from mpirnn.data.labelled_targets import LabelledTargets, row_elements
from mpirnn.data.loader import EvaluationLoader, check_token_ids
from mpirnn.data.manifest import Manifest
from mpirnn.data.reads import Reads
from mpirnn.data.row_reader import RowReader
from mpirnn.data.sampler import bucketed_epoch, longest_first, sequential_batches, shuffled_batch


class LabelledRows:
    """Reading rows of one split for a rank, as model inputs and LabelledTargets."""

    def __init__(self, manifest: Manifest, device, dtype, weights: np.ndarray | None = None):
        self.reader = RowReader(manifest)
        self.manifest, self.task = manifest, manifest.task
        self.device, self.dtype = device, dtype
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        labels = self.reader.all_labels() if weights is not None and self.task != "regress" else None
        # Each row's share of a batch's valid elements (what its summed loss is divided by).
        self.row_norms = row_elements(self.task, self.reader.lengths, labels, weights,
                                      manifest.task_spec.targets or 1)

    @property
    def lengths(self) -> np.ndarray:
        return self.reader.lengths

    def read(self, rows: np.ndarray, reads: Reads):
        """(inputs, targets, lengths) of `rows` (this rank's, global ids) over `reads.segment`;
        inputs/targets are None where this rank's stage does not read them."""
        t0, t1 = reads.segment
        batch = self.reader.read(rows, t0, t1, inputs=reads.inputs, labels=reads.targets, dtype=self.dtype)
        inputs = targets = None
        if batch.inputs is not None:
            if self.manifest.is_tokens:
                check_token_ids(batch.inputs, self.manifest, f"{self.manifest.split} split, rows {rows.tolist()[:4]}"
                                                             f"...: token id {{}}")
            inputs = batch.inputs.to(self.device)
        if batch.labels is not None:
            targets = LabelledTargets(self.task, batch.labels, batch.lengths, t0, self.weights,
                                      torch.as_tensor(np.asarray(rows, dtype=np.int64))).to(self.device)
        return inputs, targets, batch.lengths.to(self.device)

    def close(self) -> None:
        self.reader.close()


class LabelledBatchLoader:
    """Training batches: the loader interface of mpirnn/data/loader.py BatchLoader, plus each
    step's lengths and the global count its loss is divided by."""

    def __init__(self, manifest: Manifest, cfg, reads: Reads, device, dtype, rank: int = 0,
                 weights: np.ndarray | None = None):
        self.data = LabelledRows(manifest, device, dtype, weights)
        self.rank, self.reads = rank, reads
        self.batch_size, self.seed = cfg.data.batch_size, cfg.train.seed
        lengths = self.data.lengths
        self.bucket = cfg.data.bucket and len(np.unique(lengths)) > 1
        self._epoch: tuple[int, list] | None = None   # (epoch, its batches) when bucketing
        self.windows = manifest.length
        self._lengths = None

    def global_rows(self, step: int) -> np.ndarray:
        """The rows of step `step`'s global batch (0-based), longest first."""
        if not self.bucket:
            return longest_first(shuffled_batch(step, self.batch_size, self.windows, self.seed), self.data.lengths)
        epoch, position = divmod(step, self.windows // self.batch_size)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, bucketed_epoch(epoch, self.batch_size, self.data.lengths, self.seed))
        return self._epoch[1][position]

    def restarts(self, step: int) -> bool:
        return False   # rows are whole sequences: nothing carries from one step to the next

    def step_length(self, step: int) -> int:
        """The longest row of step `step`'s global batch: no step after it needs computing."""
        return int(self.data.lengths[self.global_rows(step)].max())

    def batch(self, step: int, reads: Reads | None = None):
        """(inputs, targets) of this rank's rows and segment of step `step` (`reads`: this step's
        share where it differs from the run's, as for a batch of short rows); `lengths(step)` after it."""
        reads = reads or self.reads
        rows = self.global_rows(step)[slice(*reads.rows)]
        inputs, targets, self._lengths = self.data.read(rows, reads)
        if inputs is not None:
            inputs = faults.corrupt_batch(self.rank, step + 1, inputs)
        return inputs, targets

    def lengths(self, step: int) -> torch.Tensor:
        """This rank's rows' lengths in step `step` (read by `batch`)."""
        return self._lengths

    def norm(self, step: int) -> float:
        """The valid elements of step `step`'s global batch: what its summed loss is divided by."""
        return float(self.data.row_norms[self.global_rows(step)].sum())

    def padding_fraction(self, step: int) -> float:
        """The share of padding in the global batch cut to its longest row (grid-independent)."""
        lengths = self.data.lengths[self.global_rows(step)]
        return 1.0 - float(lengths.sum()) / (len(lengths) * float(lengths.max()))

    def close(self) -> None:
        self.data.close()


class LabelledEvaluationLoader:
    """A split's rows in order, in batches of data.batch_size (the last partial), for scoring."""

    def __init__(self, manifest: Manifest, batch_size: int, device, dtype, weights: np.ndarray | None = None):
        self.data = LabelledRows(manifest, device, dtype, weights)
        self.manifest, self.batch_size = manifest, batch_size
        self.windows = manifest.length
        self.values_per_step = 1

    def batches(self, limit: int = 0) -> list:
        """Row ids of each batch, in split order within the batch order, longest first in a batch."""
        return [longest_first(rows, self.data.lengths)
                for rows in sequential_batches(self.windows, self.batch_size, limit)]

    def read(self, rows, reads: Reads):
        """(inputs, targets, lengths) of this rank's rows (`reads.rows` of `rows`) and segment."""
        return self.data.read(np.asarray(rows)[slice(*reads.rows)], reads)

    def norm(self, rows) -> float:
        return float(self.data.row_norms[np.asarray(rows)].sum())

    def close(self) -> None:
        self.data.close()


def evaluation_loader(manifest: Manifest, seq_len: int, batch_size: int, device, dtype, weights=None, inputs=None,
                      horizon: int = 1):
    """The loader that scores a split in order: labelled rows, or windows of a stream or rows
    (`inputs`: a series model's lags and calendar, mpirnn/data/model_inputs.py; `horizon`: the
    steps ahead its head predicts, mpirnn/data/horizon.py)."""
    if manifest.task_spec.labelled:
        return LabelledEvaluationLoader(manifest, batch_size, device, dtype, weights)
    return EvaluationLoader(manifest, seq_len, batch_size, device, dtype, inputs, horizon)
