"""Prepare a dataset from a UEA/UCR `.ts` file (and optionally its test file as `val`).

Classes come in the order `@classLabel` declares them (both files must declare the same);
`@targetLabel true` makes it a regression dataset. Rows are padded to the longest case of
both files, their true lengths kept. Without `--val FILE.ts` the val split is a seeded,
stratified draw of `--val-fraction` of the rows (row_splits.py).
Try it: python -m mpirnn.data prepare --out /tmp/jv --ts JapaneseVowels_TRAIN.ts \\
            --val JapaneseVowels_TEST.ts
"""

from __future__ import annotations

import logging

import numpy as np

from mpirnn.data.labelled_npy import split_labelled
from mpirnn.data.labelled_rows import Rows, pad_rows, write_labelled
from mpirnn.data.labels import class_ids, regression_targets
from mpirnn.data.manifest import TRAIN, Manifest
from mpirnn.data.row_splits import DEFAULT_SPLIT_SEED, split_record
from mpirnn.data.shard_writer import PathLike
from mpirnn.data.splits import DEFAULT_VAL_FRACTION, VAL, check_val_fraction
from mpirnn.data.tasks import TaskSpec
from mpirnn.data.ts_format import TsFile, read_ts
from mpirnn.errors import DataError

log = logging.getLogger("mpirnn.data")


def prepare_ts(file: PathLike, out: PathLike, *, val: PathLike | None = None,
               val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED,
               shard_size: int | None = None, force: bool = False) -> Manifest:
    """A .ts file as a classify (class labels) or regress (targets) dataset of rows."""
    check_val_fraction(val_fraction)
    files = [read_ts(file)] + ([read_ts(val)] if val is not None else [])
    _check_same_problem(files)
    first = files[0]
    seq_len = max(int(f.lengths.max()) for f in files)
    if first.classes:
        spec = TaskSpec("classify", first.classes)
    else:
        spec = TaskSpec("regress", targets=1)
    rows = [_rows(f, seq_len, spec) for f in files]
    for f in files:
        if f.trimmed:
            log.info(f"{f.name}: {f.trimmed} case(s) ended in missing values: those steps were "
                     f"trimmed from the case's length")
    log.info(f"{first.name}: {spec.describe()}")
    if val is not None:
        parts, record = {TRAIN: rows[0], VAL: rows[1]}, split_record("file", file=files[1].name)
        fraction = None
    else:
        parts, record = split_labelled(rows[0], spec, val_fraction, seed)
        fraction = float(val_fraction)
    lengths = np.concatenate([f.lengths for f in files])
    source = (f"ts: {' + '.join(f.name for f in files)}"
              f"{f' (@problemName {first.problem})' if first.problem else ''}, "
              f"{len(lengths)} cases, {first.dimensions} dimension(s), lengths "
              f"{lengths.min()}-{lengths.max()}")
    return write_labelled(out, parts, spec, force=force, shard_size=shard_size, source=source,
                          columns=[f"dim_{d}" for d in range(first.dimensions)],
                          val_fraction=fraction, val_split=record)


def _check_same_problem(files: list[TsFile]) -> None:
    """A --val file must have the train file's dimensions and classes (or both targets)."""
    if len(files) < 2:
        return
    train, val = files
    if train.dimensions != val.dimensions:
        raise DataError(f"{val.name} has {val.dimensions} dimension(s), {train.name} has "
                        f"{train.dimensions}: --val must be the same problem's other file")
    if train.classes != val.classes:
        said = {f.name: ' '.join(f.classes) if f.classes else "regression targets"
                for f in files}
        raise DataError(f"{val.name} declares {said[val.name]!r} but {train.name} "
                        f"{said[train.name]!r}: --val must be the same problem's other file")


def _rows(f: TsFile, seq_len: int, spec: TaskSpec) -> Rows:
    inputs, lengths = pad_rows(f.series, seq_len, np.float32)
    if spec.task == "classify":
        labels, _ = class_ids(np.array(f.labels, dtype=str), f.name, classes=spec.classes)
    else:
        labels = regression_targets(np.array(f.labels, np.float64), f.name)
    return Rows(f.name, inputs, lengths, labels)
