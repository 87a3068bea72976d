"""Labels as given by the user -> labels as stored: class ids with their names, or targets.

Every input format (npy, .ts, FASTA, audio folders) ends here, so the rules are the same
everywhere (docs/tasks.md):
- integer labels are class ids: the classes are 0 .. max id (named "0", "1", ...), or the
  names `--classes a,b,c` gives in id order;
- text labels are class names, numbered in order of first appearance (row by row, step by
  step), or in the order `--classes` gives;
- float labels are regression targets, finite;
- labels at padded steps (after a row's length) are ignored and stored as LABEL_FILL.
Exercised by: python -m pytest -q tests/test_data_labelled_npy.py
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpirnn.data.tasks import LABEL_FILL
from mpirnn.errors import DataError

def position(index: tuple[int, ...]) -> str:
    """'row 5' or 'row 5, step 3' for an index into [N] or [N, T] labels."""
    return f"row {index[0]}" + (f", step {index[1]}" if len(index) > 1 else "")


def step_mask(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """[N, T] booleans: True at each row's valid steps (t < length)."""
    return np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]


def class_ids(raw: np.ndarray, name: str, valid: np.ndarray | None = None,
              classes: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """(int64 ids shaped like `raw`, class names in id order) from integer ids or names.

    `valid` marks the labels that count ([N, T] steps within the lengths); the others
    become LABEL_FILL. `name` (the file) starts every error message.
    """
    raw = np.asarray(raw)
    valid = np.ones(raw.shape, bool) if valid is None else valid
    if raw.dtype.kind in "iub":
        ids = raw.astype(np.int64)
        negative = np.argwhere(valid & (ids < 0))
        if len(negative):
            at = tuple(map(int, negative[0]))
            raise DataError(f"{name}: negative class id {ids[at]} at {position(at)}: class ids "
                            f"are 0, 1, 2, ... (name them with --classes a,b,c)")
        high = int(ids[valid].max()) if valid.any() else 0
        if classes is not None and high >= len(classes):
            at = tuple(map(int, np.argwhere(valid & (ids >= len(classes)))[0]))
            raise DataError(f"{name}: class id {ids[at]} at {position(at)} has no name in "
                            f"--classes ({len(classes)} names, ids 0 to {len(classes) - 1})")
        names = tuple(classes) if classes is not None else tuple(map(str, range(high + 1)))
    elif raw.dtype.kind in "US":
        text = raw.astype(str)
        names = tuple(classes) if classes is not None else _first_appearance(text[valid])
        lookup = {c: i for i, c in enumerate(names)}
        ids = np.full(raw.shape, LABEL_FILL, np.int64)
        values = text[valid]
        unknown = np.flatnonzero(~np.isin(values, np.array(names, dtype=str)))
        if unknown.size:
            at = tuple(map(int, np.argwhere(valid)[unknown[0]]))
            raise DataError(f"{name}: label {str(text[at])!r} at {position(at)} is not among "
                            f"--classes {','.join(names)}: add it or fix the label")
        distinct, inverse = np.unique(values, return_inverse=True)
        ids[valid] = np.array([lookup[str(v)] for v in distinct], np.int64)[inverse.reshape(-1)]
    else:
        raise DataError(f"{name} holds {raw.dtype} labels: class labels are integer ids or "
                        f"text names (regression targets are floats: --task regress)")
    return np.where(valid, ids, LABEL_FILL), names


def _first_appearance(labels: np.ndarray) -> tuple[str, ...]:
    """Distinct labels in the order they first occur (row-major)."""
    _, first = np.unique(labels, return_index=True)
    return tuple(str(labels[i]) for i in sorted(first))


def regression_targets(raw: np.ndarray, name: str) -> np.ndarray:
    """float64 targets [N, K] ([N] becomes [N, 1]); NaN and Inf refused with their row."""
    raw = np.asarray(raw)
    if raw.dtype.kind not in "iuf":
        raise DataError(f"{name} holds {raw.dtype} labels: regression targets must be numbers")
    targets = raw.astype(np.float64).reshape(len(raw), -1)
    bad = np.argwhere(~np.isfinite(targets))
    if len(bad):
        row, k = map(int, bad[0])
        raise DataError(f"{name}: regression target {targets[row, k]} at row {row}"
                        f"{f', value {k}' if targets.shape[1] > 1 else ''} is not a finite "
                        f"number: fix or drop that row")
    return targets


def whole_numbers(raw: np.ndarray) -> bool:
    """True for floats that are all whole numbers (class ids saved as floats)."""
    values = np.asarray(raw, np.float64)
    return bool(np.isfinite(values).all() and (values == np.round(values)).all())
