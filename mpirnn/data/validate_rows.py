"""The checks of a shard of rows with lengths beyond its `data`: lengths, labels, values.

`validate_shard` (validate.py) calls these for every dataset with lengths (labelled, or
token rows of task next), at prepare, in `python -m mpirnn.data validate` and at training
start on every rank:
- layout: `lengths` [n], `input_row` [n] and (labelled) `labels` ([n], [n, T] or [n, K]),
  with the dtypes the task stores;
- values: each length in [1, T]; class ids in [0, classes) (tag: at valid steps, and the
  recorded fill value at padded ones); regression targets finite; inputs finite, or token
  ids inside the vocabulary, at every step (padded steps hold 0).
Exercised by: python -m pytest -q tests/test_data_labelled_npy.py
"""

from __future__ import annotations

import h5py
import numpy as np

from mpirnn.data.labels import step_mask
from mpirnn.data.manifest import INPUT_ROW, LABELS, LENGTHS, Manifest
from mpirnn.errors import DataError

_REPREPARE = "re-run python -m mpirnn.data prepare"
ROWS_AT_ONCE = 4096


def check_row_layout(f: h5py.File, manifest: Manifest, name: str, length: int) -> None:
    """The side datasets exist with the shapes and dtypes the manifest's task implies."""
    spec = manifest.task_spec
    wanted = {LENGTHS: ("i", (length,)), INPUT_ROW: ("i", (length,))}
    if spec.labelled:
        wanted[LABELS] = ("f" if spec.task == "regress" else "i",
                          (length, *spec.label_shape(manifest.seq_len)))
    for dataset, (kind, shape) in wanted.items():
        found = f.get(dataset)
        if not isinstance(found, h5py.Dataset):
            raise DataError(f"{name}: no HDF5 dataset {dataset!r}, which a {spec.task!r} "
                            f"dataset holds: {_REPREPARE}")
        if found.dtype.kind != kind or found.shape != shape:
            raise DataError(f"{name}: {dataset} is {found.dtype} {list(found.shape)}, manifest.json "
                            f"expects {'floats' if kind == 'f' else 'integers'} {list(shape)}: "
                            f"{_REPREPARE}")


def scan_rows(f: h5py.File, manifest: Manifest, name: str, offset: int) -> None:
    """Every length, label and input value of the shard, ROWS_AT_ONCE rows at a time."""
    data, lengths_all = f[manifest.dataset], f[LENGTHS]
    spec, seq_len = manifest.task_spec, manifest.seq_len
    for start in range(0, data.shape[0], ROWS_AT_ONCE):
        stop = min(start + ROWS_AT_ONCE, data.shape[0])
        lengths = lengths_all[start:stop]

        def at(i: int) -> str:
            return f"row {offset + start + i}"

        bad = np.flatnonzero((lengths < 1) | (lengths > seq_len))
        if bad.size:
            raise DataError(f"{name}: length {int(lengths[bad[0]])} at {at(bad[0])} is outside "
                            f"[1, {seq_len}]: {_REPREPARE}")
        if spec.labelled:
            _scan_labels(f[LABELS][start:stop], lengths, spec, seq_len, name, at)
        _scan_inputs(np.asarray(data[start:stop]), manifest, name, at)


def _scan_labels(labels: np.ndarray, lengths: np.ndarray, spec, seq_len: int, name: str,
                 at) -> None:
    """Targets finite; class ids in range at valid steps, the fill value at padded ones."""
    if spec.task == "regress":
        bad = np.argwhere(~np.isfinite(labels))
        if len(bad):
            raise DataError(f"{name}: regression target {labels[tuple(bad[0])]} at "
                            f"{at(bad[0][0])} is not finite: {_REPREPARE}")
        return
    valid = step_mask(lengths, seq_len) if spec.task == "tag" else np.ones(len(labels), bool)
    wrong = valid & ((labels < 0) | (labels >= spec.n_classes))
    if spec.task == "tag":
        wrong |= ~valid & (labels != spec.label_fill)
    bad = np.argwhere(wrong)
    if len(bad):
        where = at(bad[0][0]) + (f", step {bad[0][1]}" if spec.task == "tag" else "")
        raise DataError(f"{name}: label {int(labels[tuple(bad[0])])} at {where} is not a "
                        f"class id in [0, {spec.n_classes}) (padded steps hold "
                        f"{spec.label_fill}): {_REPREPARE}")


def _scan_inputs(x: np.ndarray, manifest: Manifest, name: str, at) -> None:
    if manifest.is_tokens:
        bad = np.argwhere((x < 0) | (x >= manifest.vocab_size))
        if len(bad):
            r, t = map(int, bad[0])
            raise DataError(f"{name}: token id {int(x[r, t])} at {at(r)}, step {t} is outside "
                            f"the vocabulary (vocab_size={manifest.vocab_size}): {_REPREPARE}")
        return
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, t, k = map(int, bad[0])
        raise DataError(f"{name}: {x[r, t, k]} at {at(r)}, step {t}, feature {k}: fix the input "
                        f"and {_REPREPARE}")
