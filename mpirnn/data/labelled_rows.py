"""Writing labelled rows of different lengths: the step every labelled input ends with.

Each input format (npy, .ts, FASTA, audio) turns its file into `Rows` per split — inputs
padded to the dataset's longest row T, true lengths, encoded labels — and calls
`write_labelled`. It checks everything first (lengths in [1, T], finite numbers or token
ids >= 0 at valid steps), so a refusal writes nothing; then writes each split's shards:

    data       [n, T, F] float32 or [n, T] token ids; padded steps hold 0
    lengths    [n] int32, the true length of each row
    labels     [n] int32 class ids, [n, T] int32 per step (-1 at padded steps), or
               [n, K] float32 regression targets (data units)
    input_row  [n] int64, the row's position in the input (its line, record or file)

with the train split's statistics over valid steps only, and the manifest last.
Exercised by: python -m pytest -q tests/test_data_labelled_npy.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mpirnn.data.labels import step_mask
from mpirnn.data.manifest import INPUT_ROW, LABELS, LENGTHS, TRAIN, Manifest
from mpirnn.data.normalization import RunningMoments
from mpirnn.data.row_splits import warn_missing_classes
from mpirnn.data.shard_writer import PathLike, ShardWriter, check_positive, claim_output
from mpirnn.data.splits import finish_splits
from mpirnn.data.tasks import TaskSpec
from mpirnn.errors import DataError

BLOCK_VALUES = 4 * 1024 * 1024   # input values read at once


@dataclass(frozen=True)
class Rows:
    """Rows of one input, before writing. `inputs` may be a memory map; `rows` selects (and
    orders) the rows that belong to one split, by their position in the input."""

    name: str                # the file, for messages
    inputs: np.ndarray       # [N, T, F] numbers or [N, T] token ids; padded steps ignored
    lengths: np.ndarray      # [N] true lengths
    labels: np.ndarray | None  # [N] or [N, T] int64 class ids, [N, K] float64 targets; None: next
    rows: np.ndarray | None = None

    @property
    def selected(self) -> np.ndarray:
        return np.arange(len(self.lengths)) if self.rows is None else self.rows

    def take(self, rows: np.ndarray) -> Rows:
        return replace(self, rows=self.selected[rows])

    def blocks(self):
        """(input rows, inputs, lengths, labels) blocks of at most BLOCK_VALUES input values."""
        per_row = max(1, math.prod(self.inputs.shape[1:]))
        step = max(1, BLOCK_VALUES // per_row)
        selected = self.selected
        for start in range(0, len(selected), step):
            rows = selected[start:start + step]
            labels = None if self.labels is None else self.labels[rows]
            yield rows, np.asarray(self.inputs[rows]), self.lengths[rows], labels


def pad_rows(rows: list[np.ndarray], seq_len: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows ([length, F] or [length]) -> ([N, seq_len, ...] zero-padded, lengths [N])."""
    padded = np.zeros((len(rows), seq_len, *rows[0].shape[1:]), dtype)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    return padded, np.array([len(row) for row in rows], np.int64)


def check_lengths(name: str, lengths: np.ndarray, rows: int, seq_len: int) -> np.ndarray:
    """int64 lengths [N], each in [1, T]; a DataError names the first that is not."""
    lengths = np.asarray(lengths)
    if lengths.shape != (rows,):
        raise DataError(f"{name} has shape {list(lengths.shape)}: lengths are one integer per "
                        f"row, [{rows}]")
    if lengths.dtype.kind not in "iu":
        raise DataError(f"{name} holds {lengths.dtype}: lengths are integers (steps per row)")
    bad = np.flatnonzero((lengths <= 0) | (lengths > seq_len))
    if bad.size:
        row = int(bad[0])
        raise DataError(f"{name}: length {int(lengths[row])} at row {row} is outside [1, "
                        f"{seq_len}] (T = {seq_len} steps per row): fix the lengths")
    return lengths.astype(np.int64)


def scan_inputs(rows: Rows, tokens: bool) -> int:
    """Refuse NaN/Inf (after float32) or negative token ids at valid steps; return the
    largest token id (-1 for numbers)."""
    high = -1
    for selected, x, lengths, _ in rows.blocks():
        valid = step_mask(lengths, x.shape[1])
        if tokens:
            bad = np.argwhere(valid & (x < 0))
            if len(bad):
                r, t = map(int, bad[0])
                raise DataError(f"{rows.name}: negative token id {int(x[r, t])} at row "
                                f"{int(selected[r])}, step {t}: token ids are 0, 1, 2, ...")
            high = max(high, int(x[valid].max()) if valid.any() else 0)
            continue
        with np.errstate(over="ignore"):
            values = x.astype(np.float32)
        bad = np.argwhere(valid[..., None] & ~np.isfinite(values))
        if len(bad):
            r, t, f = map(int, bad[0])
            what = "missing value (NaN)" if np.isnan(values[r, t, f]) else f"value {x[r, t, f]}"
            raise DataError(f"{rows.name}: {what} at row {int(selected[r])}, step {t}, feature "
                            f"{f} (within the row's length {int(lengths[r])}): fill it before "
                            f"preparing, or shorten the row's length")
    return high


def class_counts(rows: Rows, n_classes: int) -> np.ndarray:
    """Labels per class id over the selected rows (valid steps only for `tag`)."""
    labels = rows.labels[rows.selected]
    return np.bincount(labels[labels >= 0].ravel(), minlength=n_classes)


def write_labelled(out: PathLike, parts: dict[str, Rows], task: TaskSpec, *, source: str,
                   force: bool = False, shard_size: int | None = None,
                   vocab_size: int | None = None, columns: list[str] | None = None,
                   **fields) -> Manifest:
    """Check, then write every split of `parts` ({split: Rows}, train first) and the manifest.

    Token rows (2-D inputs) get vocab_size max id + 1 unless given; number rows are
    normalized with the train split's valid steps. `fields` are further Manifest fields
    (val_fraction, val_split, alphabet, audio).
    """
    check_positive(shard_size=shard_size, vocab_size=vocab_size)
    first = parts[TRAIN]
    tokens = first.inputs.ndim == 2
    seq_len = first.inputs.shape[1]
    high = max(scan_inputs(rows, tokens) for rows in parts.values())
    if not tokens and vocab_size is not None:
        raise DataError("--vocab-size applies to token ids; these rows are numbers: drop it")
    if tokens:
        if high >= 2**31:
            raise DataError(f"token id {high} does not fit int32 token ids (max 2**31 - 1)")
        if vocab_size is not None and high >= vocab_size:
            raise DataError(f"token id {high} is outside --vocab-size {vocab_size}: pass a larger "
                            f"--vocab-size")
        vocab_size = vocab_size or high + 1
        kind, dtype, shape = "token_sequences", "uint8" if vocab_size <= 256 else "int32", ()
    else:
        kind, dtype, shape = "sequences", "float32", (first.inputs.shape[2],)
    if task.classes is not None:
        warn_missing_classes(task.classes, {split: class_counts(rows, len(task.classes))
                                            for split, rows in parts.items()})
    root = claim_output(out, force)   # after every refusal: an old dataset stays intact
    side = {LENGTHS: ("int32", (), False), INPUT_ROW: ("int64", (), False)}
    if task.labelled:
        side[LABELS] = (task.label_dtype, task.label_shape(seq_len), task.task == "tag")
    moments = None if tokens else RunningMoments(shape[0])
    targets = RunningMoments(task.targets) if task.task == "regress" else None
    shards = {}
    for split, rows in parts.items():
        writer = ShardWriter(root, kind, dtype, (seq_len, *shape), shard_size,
                             {"vocab_size": vocab_size} if tokens else {}, split, side)
        try:
            for selected, x, lengths, labels in rows.blocks():
                valid = step_mask(lengths, seq_len)
                x = np.where(valid if tokens else valid[..., None], x, 0)   # padding is 0
                if split == TRAIN:
                    if moments is not None:
                        moments.add(x.astype(np.float32), valid)   # the stored values
                    if targets is not None:
                        targets.add(labels.astype(np.float32))
                writer.write(x, {LENGTHS: lengths, LABELS: labels, INPUT_ROW: selected})
            shards[split] = writer.finish()
        finally:
            writer.abandon()
    stats = {}
    if moments is not None:
        stats["normalization"] = moments.result(columns or [str(j) for j in range(shape[0])])
    if targets is not None:
        task = replace(task, target_normalization=targets.result(
            [f"target {k}" for k in range(task.targets)]))
    return finish_splits(root, shards, kind=kind, dtype=dtype, seq_len=seq_len,
                         features=None if tokens else shape[0],
                         vocab_size=vocab_size if tokens else None, source=source,
                         task_spec=task, **stats, **fields)
