"""Prepare labelled rows from .npy arrays: inputs X, labels Y, optional true lengths L.

    X [N, T, F] numbers (or [N, T]: one feature), or [N, T] token ids (--kind tokens)
    Y [N] one label per sequence, or [N, T] one per step: integer ids or text (classes),
      floats (regress; [N] or [N, K])
    L [N] true lengths in [1, T] (default: every row is T steps long)

The task is inferred from Y and printed in one line; `task` overrides. X is read through a
memory map; the val split is a seeded random draw, stratified by class (row_splits.py).
Try it: python -m mpirnn.data prepare --out /tmp/ds --npy x.npy --labels y.npy --lengths l.npy
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence

import numpy as np

from mpirnn.data.labelled_rows import Rows, check_lengths, write_labelled
from mpirnn.data.labels import class_ids, regression_targets, step_mask, whole_numbers
from mpirnn.data.manifest import TRAIN, Manifest
from mpirnn.data.npy_input import load_npy
from mpirnn.data.row_splits import DEFAULT_SPLIT_SEED, split_record, split_rows
from mpirnn.data.shard_writer import PathLike
from mpirnn.data.splits import DEFAULT_VAL_FRACTION, VAL, check_val_fraction
from mpirnn.data.tasks import LABEL_FILL, LABELLED_TASKS, TaskSpec
from mpirnn.errors import DataError

log = logging.getLogger("mpirnn.data")


def prepare_labelled_npy(file: PathLike, labels: PathLike, out: PathLike, *,
                         lengths: PathLike | None = None, kind: str | None = None,
                         task: str | None = None, classes: Sequence[str] | None = None,
                         vocab_size: int | None = None,
                         val_fraction: float = DEFAULT_VAL_FRACTION,
                         seed: int = DEFAULT_SPLIT_SEED, shard_size: int | None = None,
                         force: bool = False) -> Manifest:
    """Rows X with labels Y (and lengths L) as a tag, classify or regress dataset."""
    check_val_fraction(val_fraction)
    file, labels = pathlib.Path(file), pathlib.Path(labels)
    x = load_npy(file)
    tokens = _input_kind(file.name, x, kind)
    y = _load_labels(labels)
    n, seq_len = x.shape[0], x.shape[1]
    if y.ndim == 0 or len(y) != n:
        count = "a single value" if y.ndim == 0 else f"{len(y)} labels"
        raise DataError(f"{labels.name} holds {count} but {file.name} has {n} rows: give one "
                        f"label per row ([{n}]) or one per step ([{n}, {seq_len}])")
    lengths = (np.full(n, seq_len, np.int64) if lengths is None else
               check_lengths(pathlib.Path(lengths).name, load_npy(pathlib.Path(lengths)), n,
                             seq_len))
    task = infer_task(labels.name, y, seq_len, task)
    if classes is not None and task == "regress":
        raise DataError("--classes names class labels; regression targets have no classes: "
                        "drop --classes")
    if task == "regress":
        encoded = regression_targets(y, labels.name)
        spec = TaskSpec("regress", targets=encoded.shape[1])
    else:
        valid = step_mask(lengths, seq_len) if task == "tag" else None
        raw = np.round(y).astype(np.int64) if y.dtype.kind == "f" else y
        encoded, names = class_ids(raw, labels.name, valid, classes)
        spec = TaskSpec(task, names, label_fill=LABEL_FILL if task == "tag" else None)
    log.info(f"{labels.name}: {spec.describe()}")
    source = (f"npy: {file.name} {list(x.shape)} {x.dtype}, labels {labels.name} "
              f"{list(y.shape)} {y.dtype}")
    if not tokens and x.ndim == 2:
        x = x[..., None]   # [N, T] numbers: one feature per step (a view of the memory map)
    rows = Rows(file.name, x, lengths, encoded)
    parts, record = split_labelled(rows, spec, val_fraction, seed)
    return write_labelled(out, parts, spec, force=force, shard_size=shard_size,
                          vocab_size=vocab_size, val_fraction=float(val_fraction),
                          val_split=record, source=source)


def split_labelled(rows: Rows, spec: TaskSpec, val_fraction: float,
                   seed: int) -> tuple[dict[str, Rows], dict | None]:
    """({train, val} Rows, the manifest's val_split record): stratified for classify."""
    if val_fraction == 0:
        return {TRAIN: rows}, None
    strata = rows.labels if spec.task == "classify" else None
    train, val = split_rows(len(rows.lengths), val_fraction, seed, strata)
    method = "stratified" if strata is not None else "random"
    return ({TRAIN: rows.take(train), VAL: rows.take(val)},
            split_record(method, float(val_fraction), seed))


def infer_task(name: str, y: np.ndarray, seq_len: int, task: str | None) -> str:
    """tag, classify or regress from the labels' shape and dtype; `task` must agree."""
    per_step = y.ndim == 2 and y.shape[1] == seq_len
    numbers = y.dtype.kind == "f"
    if y.ndim > 2 or (y.ndim == 2 and not per_step and not numbers):
        raise DataError(f"{name} has shape {list(y.shape)}: labels are [N] (one per sequence) or "
                        f"[N, T] = [{len(y)}, {seq_len}] (one per step); regression targets "
                        f"[N, K] are floats")
    if numbers:
        inferred = "regress"
    else:
        inferred = "tag" if per_step else "classify"
    if task is None:
        return inferred
    if task not in LABELLED_TASKS:
        raise DataError(f"--task {task!r} with --labels: labelled tasks are "
                        f"{', '.join(LABELLED_TASKS)} (task next takes no labels)")
    if task == inferred:
        return task
    if task == "regress":
        fits, why = y.dtype.kind in "iu", "regression targets are numbers"
    else:
        shaped = per_step if task == "tag" else y.ndim == 1
        fits = shaped and (not numbers or whole_numbers(y))
        why = (f"{task} needs labels shaped {'[N, T]' if task == 'tag' else '[N]'}" if not shaped
               else "class ids must be whole numbers")
    if fits:
        return task
    raise DataError(f"--task {task}: {name} is {y.dtype} {list(y.shape)}, but {why}: drop "
                    f"--task to use the inferred task {inferred!r}")


def _input_kind(name: str, x: np.ndarray, kind: str | None) -> bool:
    """True for token ids [N, T]; refuses inputs that are not rows."""
    described = f"{name} is a {x.ndim}-D {x.dtype} array"
    if x.ndim == 1:
        raise DataError(f"{described}: labelled inputs are rows, [N, T, F] numbers or [N, T] "
                        f"token ids")
    is_int = x.dtype.kind in "iu"
    if kind == "tokens" and (not is_int or x.ndim != 2):
        raise DataError(f"--kind tokens: {described}, but token rows are [N, T] integers: use "
                        f"--kind series for numbers")
    if kind is None and is_int and x.ndim == 2:
        log.info(f"{described}: read as token ids [N, T] (pass --kind series for numbers)")
        return True
    if kind is None and x.ndim == 2:
        log.info(f"{described}: read as rows of one feature [N, T, 1]")
    return kind == "tokens"


def _load_labels(file: pathlib.Path) -> np.ndarray:
    """Labels: numbers or fixed-width text (numpy's U/S dtypes), never pickled objects."""
    if not file.is_file():
        raise DataError(f"labels file {file} does not exist: check --labels")
    try:
        y = np.load(file, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{file} is not a plain .npy array ({exc}): save text labels as "
                        f"np.array(labels, dtype=str), numbers as they are") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{file} is not a .npy file ({exc}): save it with numpy.save") from None
    if not isinstance(y, np.ndarray):
        raise DataError(f"{file} is an .npz archive: save one array with numpy.save")
    if y.dtype.kind not in "iufbUS":
        raise DataError(f"{file.name} holds {y.dtype}: labels are integers, text or floats")
    return y
