"""This rank's batches: the global batch of each step (from the sampler), cut to the
rank's rows (dp) and time segment (sp), read from HDF5 — and the checks that the
dataset fits the run, done on every rank and agreed before any compute.

Under pipeline parallelism only the first stage reads inputs and only the last reads
targets; a middle stage reads nothing (its inputs arrive from the stage before it).
"""

from __future__ import annotations

import numpy as np

from mpirnn.training import faults
from mpirnn.data.manifest import Manifest
from mpirnn.data.reader import Reader
from mpirnn.data.sampler import lane_batch, lane_restarts, shuffled_batch
from mpirnn.errors import DataError
from mpirnn.parallel.grid import Grid
from mpirnn.parallel.plan import Plan, make_plan


def check_fit(manifest: Manifest, cfg, grid: Grid) -> None:
    """Refuse a dataset that cannot serve this config, with what to change."""
    d = cfg.data
    if d.batch_size < grid.dp:
        raise DataError(f"data.batch_size = {d.batch_size} gives some of the {grid.dp} data-parallel ranks no rows: "
                        f"use data.batch_size >= parallel.dp")
    if manifest.kind == "sequences" and d.seq_len + 1 > manifest.seq_len:
        raise DataError(f"data.seq_len = {d.seq_len} needs {d.seq_len + 1} steps per row but the dataset's rows "
                        f"have {manifest.seq_len}: use data.seq_len <= {manifest.seq_len - 1}")
    # Microbatches and chunks are refused the same way on every rank (the fewest rows decide).
    make_plan(grid, grid.coords(0), batch_size=d.batch_size, seq_len=d.seq_len, layers=cfg.model.layers,
              cell=cfg.model.cell, microbatches=cfg.parallel.microbatches, chunks=cfg.parallel.chunks)
    windows = Reader(manifest).n_windows(d.seq_len)
    if windows < d.batch_size:
        raise DataError(f"{manifest.root} holds {windows} sequences of {d.seq_len} steps, fewer than one batch "
                        f"of {d.batch_size}: use more data, a shorter data.seq_len or a smaller data.batch_size")


class BatchLoader:
    def __init__(self, manifest: Manifest, cfg, plan: Plan, device, dtype, rank: int = 0):
        self.reader = Reader(manifest)
        self.rank = rank  # for fault injection in tests only
        self.seq_len, self.batch_size = cfg.data.seq_len, cfg.data.batch_size
        self.seed, self.stateful = cfg.train.seed, cfg.train.stateful
        self.rows, self.segment = plan.rows, plan.segment
        self.reads_inputs, self.reads_targets = plan.first_stage, plan.last_stage
        self.windows = self.reader.n_windows(self.seq_len)
        self.device, self.dtype = device, dtype
        # Every loss term of the global batch: the serial loss is a mean over these.
        self.elements = self.batch_size * self.seq_len * (manifest.features or 1)

    def global_windows(self, step: int) -> np.ndarray:
        if self.stateful:
            return lane_batch(step, self.batch_size, self.windows)
        return shuffled_batch(step, self.batch_size, self.windows, self.seed)

    def restarts(self, step: int) -> bool:
        """Stateful lanes wrapped round: carried states must start from zero again."""
        return self.stateful and lane_restarts(step, self.batch_size, self.windows)

    def batch(self, step: int):
        """(inputs, targets) for this rank's rows and segment of step `step` (0-based); each is
        None where this rank's pipeline stage does not need it."""
        if not (self.reads_inputs or self.reads_targets):
            return None, None
        windows = self.global_windows(step)[slice(*self.rows)]
        t0, t1 = self.segment
        # A block holds steps [first, last + 1): inputs are steps t0..t1-1, targets t0+1..t1.
        first, last = t0 + (not self.reads_inputs), t1 - (not self.reads_targets)
        block = self.reader.block(windows, self.seq_len, first, last, dtype=self.dtype)
        block = faults.corrupt_batch(self.rank, step + 1, block)
        self._check_tokens(block, step)
        block = block.to(self.device)
        inputs = block[:, :t1 - t0] if self.reads_inputs else None
        targets = block[:, -(t1 - t0):] if self.reads_targets else None
        return inputs, targets

    def _check_tokens(self, block, step: int) -> None:
        """Ids past the vocabulary would crash the embedding with no hint; say what and where."""
        vocab = self.reader.manifest.vocab_size
        if vocab is None or block.numel() == 0:
            return
        low, high = int(block.min()), int(block.max())
        if low < 0 or high >= vocab:
            bad = high if high >= vocab else low
            raise DataError(f"step {step + 1}: token id {bad} in this rank's batch (rows {self.rows[0]}-"
                            f"{self.rows[1] - 1} of the global batch) is outside the vocabulary "
                            f"(vocab_size={vocab}); check the data with python -m mpirnn.data validate "
                            f"{self.reader.manifest.root}")

    def close(self) -> None:
        self.reader.close()


