"""This rank's batches: the global batch of each step (from the sampler), cut to the
rank's rows and time segment, read from HDF5.

What a rank reads is a `Reads` (mpirnn/data/reads.py: rows, time steps, inputs and/or
targets); the parallel plan that decides it lives above this package. Under pipeline
parallelism only the first stage reads inputs and only the last reads targets; a middle
stage reads nothing (its inputs arrive from the stage before it). `EvaluationLoader` reads a
held-out split the same way, in order, for evaluation.
"""

from __future__ import annotations

import numpy as np

from mpirnn import faults
from mpirnn.config import steps_ahead
from mpirnn.data.horizon import read_horizon_targets, targets_per_window
from mpirnn.data.manifest import Manifest
from mpirnn.data.model_inputs import ModelInputs, read_inputs, resolve_inputs
from mpirnn.data.reader import Reader
from mpirnn.data.reads import Reads
from mpirnn.data.sampler import lane_batch, lane_restarts, sequential_batches, shuffled_batch, window_stride
from mpirnn.errors import DataError


def training_end(manifest: Manifest, cfg) -> int:
    """Where a stream's training windows stop: its end, less the steps data.holdout keeps for
    `forecast` to calibrate on (docs/forecasting.md, "Calibrated bands"). Rows: their count."""
    return manifest.length - (cfg.data.holdout if manifest.is_stream else 0)


def training_stride(manifest: Manifest, cfg) -> int | None:
    """Steps between the starts of training windows (None: rows, not a stream)."""
    if not manifest.is_stream:
        return None
    return window_stride(cfg.data.windows, manifest.kind, cfg.train.stateful, cfg.data.seq_len,
                         training_end(manifest, cfg), cfg.data.batch_size, steps_ahead(cfg.train))


def first_window(inputs: ModelInputs | None) -> int:
    """Where a stream's first window starts: late enough that its lagged inputs exist."""
    return inputs.back if inputs is not None else 0


class BatchLoader:
    def __init__(self, manifest: Manifest, cfg, reads: Reads, device, dtype, rank: int = 0):
        # Lags and calendar (mpirnn/data/model_inputs.py) widen the inputs; None: the stored values.
        self.inputs = resolve_inputs(manifest, cfg)
        self.reader = Reader(manifest, training_stride(manifest, cfg), first_window(self.inputs),
                             training_end(manifest, cfg))
        self.rank = rank  # for fault injection in tests only
        self.seq_len, self.batch_size = cfg.data.seq_len, cfg.data.batch_size
        self.seed, self.stateful = cfg.train.seed, cfg.train.stateful
        self.rows, self.segment = reads.rows, reads.segment
        self.reads_inputs, self.reads_targets = reads.inputs, reads.targets
        self.windows = self.reader.n_windows(self.seq_len)
        self.device, self.dtype = device, dtype
        self.horizon = steps_ahead(cfg.train)   # steps ahead each step predicts (mpirnn/data/horizon.py)
        # Every loss term of the global batch: the serial loss is a mean over these.
        self.elements = self.batch_size * targets_per_window(self.seq_len, self.horizon) * (manifest.features or 1)

    def global_windows(self, step: int) -> np.ndarray:
        if self.stateful:
            return lane_batch(step, self.batch_size, self.windows)
        return shuffled_batch(step, self.batch_size, self.windows, self.seed)

    def restarts(self, step: int) -> bool:
        """Stateful lanes wrapped round: carried states must start from zero again."""
        return self.stateful and lane_restarts(step, self.batch_size, self.windows)

    def step_length(self, step: int) -> None:
        """Every window is seq_len steps long (labelled rows: mpirnn/data/labelled_loader.py)."""
        return None

    def batch(self, step: int, reads: Reads | None = None):
        """(inputs, targets) for this rank's rows and segment of step `step` (0-based); each is
        None where this rank's pipeline stage does not need it. `reads` is always the run's here."""
        if not (self.reads_inputs or self.reads_targets):
            return None, None
        windows = self.global_windows(step)[slice(*self.rows)]
        if self.horizon > 1 or self.inputs is not None and self.inputs.widens:
            return read_apart(self.reader, windows, self.seq_len, self.segment, self.reads_inputs,
                              self.reads_targets, self.inputs, self.horizon, self.dtype, self.device)
        block = read_block(self.reader, windows, self.seq_len, self.segment, self.reads_inputs,
                           self.reads_targets, self.dtype)
        block = faults.corrupt_batch(self.rank, step + 1, block)
        check_token_ids(block, self.reader.manifest,
                        f"step {step + 1}: token id {{}} in this rank's batch (rows {self.rows[0]}-"
                        f"{self.rows[1] - 1} of the global batch)")
        return split_block(block.to(self.device), self.segment, self.reads_inputs, self.reads_targets)

    def norm(self, step: int) -> float:
        """What step `step`'s summed loss is divided by: every value of the global batch."""
        return float(self.elements)

    def lengths(self, step: int):
        """Every row fills its window: no lengths (labelled rows: mpirnn/data/labelled_loader.py)."""
        return None

    def close(self) -> None:
        self.reader.close()


def read_block(reader: Reader, windows, seq_len: int, segment: tuple[int, int], reads_inputs: bool,
               reads_targets: bool, dtype):
    """Steps of `segment` of the given windows as one CPU tensor: one more step than the
    segment when both inputs and targets are read (inputs are steps t0..t1-1, targets t0+1..t1)."""
    t0, t1 = segment
    # A block holds steps [first, last + 1).
    first, last = t0 + (not reads_inputs), t1 - (not reads_targets)
    return reader.block(windows, seq_len, first, last, dtype=dtype)


def read_apart(reader: Reader, windows, seq_len: int, segment: tuple[int, int], reads_inputs: bool,
               reads_targets: bool, inputs: ModelInputs | None, horizon: int, dtype, device):
    """(inputs, targets) read apart: where the inputs are wider than the targets (lags, calendar),
    or the targets reach past the segment (train.horizon > 1: a HorizonTargets, mpirnn/data/horizon.py)."""
    read = None
    if reads_inputs and inputs is not None and inputs.widens:
        read = read_inputs(reader, windows, seq_len, segment, inputs, dtype).to(device)
    elif reads_inputs:
        read = reader.block(windows, seq_len, segment[0], segment[1] - 1, dtype=dtype).to(device)
    targets = None
    if reads_targets and horizon > 1:
        targets = read_horizon_targets(reader, windows, seq_len, segment, horizon, dtype).to(device)
    elif reads_targets:
        block = reader.block(windows, seq_len, segment[0] + 1, segment[1], dtype=dtype)
        targets = block[:, :segment[1] - segment[0]].to(device)
    return read, targets


def split_block(block, segment: tuple[int, int], reads_inputs: bool, reads_targets: bool):
    """(inputs, targets) of a block from `read_block`, None for the part not read."""
    steps = segment[1] - segment[0]
    return (block[:, :steps] if reads_inputs else None), (block[:, -steps:] if reads_targets else None)


def check_token_ids(block, manifest: Manifest, where: str) -> None:
    """Ids past the vocabulary would crash the embedding with no hint; say what and where.

    `where` is the start of the message, with `{}` for the offending id."""
    vocab = manifest.vocab_size
    if vocab is None or block.numel() == 0:
        return
    low, high = int(block.min()), int(block.max())
    if low < 0 or high >= vocab:
        bad = high if high >= vocab else low
        raise DataError(f"{where.format(bad)} is outside the vocabulary (vocab_size={vocab}); check the data "
                        f"with python -m mpirnn.data validate {manifest.root}")


def check_eval_fit(manifest: Manifest, seq_len: int, setting: str = "data.seq_len", origin: int = 0) -> int:
    """The number of sequences a split holds at seq_len; refuse a split too short for one.
    `origin`: the steps before the first window (read only as lags)."""
    windows = Reader(manifest, origin=origin).n_windows(seq_len)
    if windows == 0:
        longest = manifest.length - 1 - origin if manifest.is_stream else manifest.seq_len - 1
        have = f"{manifest.length} steps" if manifest.is_stream else f"rows of {manifest.seq_len} steps"
        raise DataError(f"the {manifest.split} split of {manifest.root} holds {have}, too few for one sequence of "
                        f"{seq_len} steps plus its target: use {setting} <= {max(1, longest)}"
                        f"{' or prepare the data with a larger --val-fraction' if manifest.split != 'train' else ''}")
    return windows


class EvaluationLoader:
    """Sequential batches of one split (every window once, in order) for held-out evaluation.

    Each batch is read for whatever share (`Reads`) the caller scores it with (the last batch may be
    smaller than data.batch_size, so its rows are cut differently): the rank reads only its
    rows and its segment, the first stage inputs and the last stage targets.
        python -m pytest -q tests/test_inference_scoring.py
    """

    def __init__(self, manifest: Manifest, seq_len: int, batch_size: int, device, dtype,
                 inputs: ModelInputs | None = None, horizon: int = 1):
        """`inputs`: what the model reads (lags and calendar; None: the stored values); `horizon`:
        the steps ahead its head predicts (train.horizon)."""
        if inputs is not None:
            inputs.check_data(manifest)
        self.inputs = inputs
        self.reader = Reader(manifest, origin=first_window(inputs))
        self.manifest, self.seq_len, self.batch_size = manifest, seq_len, batch_size
        self.windows = check_eval_fit(manifest, seq_len, origin=first_window(inputs))
        self.device, self.dtype = device, dtype
        self.values_per_step = manifest.features or 1
        self.horizon = horizon
        self.targets_per_window = targets_per_window(seq_len, horizon)   # per feature

    def batches(self, limit: int = 0) -> list:
        """Window ids of each batch, in order (`limit` > 0: only the first `limit` batches)."""
        return sequential_batches(self.windows, self.batch_size, limit)

    def read(self, windows, reads: Reads):
        """(inputs, targets) of this rank's rows (`reads.rows` of `windows`) and segment."""
        if not (reads.inputs or reads.targets) or reads.local_rows == 0:
            return None, None
        mine = windows[slice(*reads.rows)]
        if self.horizon > 1 or self.inputs is not None and self.inputs.widens:
            return read_apart(self.reader, mine, self.seq_len, reads.segment, reads.inputs, reads.targets,
                              self.inputs, self.horizon, self.dtype, self.device)
        block = read_block(self.reader, mine, self.seq_len, reads.segment, reads.inputs, reads.targets,
                           self.dtype)
        check_token_ids(block, self.manifest, f"{self.manifest.split} split, sequences {int(mine[0])}-"
                                              f"{int(mine[-1])}: token id {{}}")
        return split_block(block.to(self.device), reads.segment, reads.inputs, reads.targets)

    def close(self) -> None:
        self.reader.close()
