"""The val split of labelled rows: a seeded random draw, stratified by class.

Streams hold out their final fraction (splits.py); labelled rows are independent examples,
often sorted by class or source, so the last rows would be a biased sample. Here the val
split takes round(F x N) rows drawn with `numpy.random.default_rng(seed)`: for `classify`
each class gives its share (largest remainders settle the rounding, so the total is
exact), for `tag` and `regress` rows are drawn from all. Both splits keep the input's
order. Or the user gives the val rows as a file of their own (`--val`).
Exercised by: python -m pytest -q tests/test_data_labelled_npy.py
"""

from __future__ import annotations

import logging

import numpy as np

from mpirnn.data.splits import val_length

log = logging.getLogger("mpirnn.data")
DEFAULT_SPLIT_SEED = 0


def split_rows(n: int, fraction: float, seed: int = DEFAULT_SPLIT_SEED,
               strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows), each sorted; `strata` (class ids [n]) makes it stratified.

    The val size is checked as for any row dataset (at least one row each side).
    """
    held = val_length(n, fraction, "sequences")
    rng = np.random.default_rng(seed)
    if held == 0:
        return np.arange(n), np.arange(0)
    if strata is None:
        val = rng.permutation(n)[:held]
    else:
        groups = [np.flatnonzero(strata == c) for c in np.unique(strata)]
        quota = np.array([fraction * len(g) for g in groups])
        take = np.floor(quota).astype(np.int64)
        # The rows still to place go to the largest remainders (ties: the smaller class id).
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:held - int(take.sum())]] += 1
        val = np.concatenate([rng.permutation(g)[:k] for g, k in zip(groups, take)])
    val = np.sort(val)
    return np.setdiff1d(np.arange(n), val), val


def split_record(method: str, fraction: float | None = None, seed: int | None = None,
                 file: str | None = None) -> dict:
    """The manifest's `val_split`: how the val rows were chosen (stratified, random, file)."""
    record = {"method": method, "fraction": fraction, "seed": seed, "file": file}
    return {k: v for k, v in record.items() if v is not None}


def warn_missing_classes(classes: tuple[str, ...], counts: dict[str, np.ndarray]) -> None:
    """Warn for each class without labels: in every split (kept in the class list, so the
    ids stay as given), or in one split ({split: counts per class id}) only."""
    total = sum(counts.values())
    unused = [c for c, t in zip(classes, total) if t == 0]
    if unused:
        log.warning(f"class(es) {_names(unused)} have no labels at all: they stay in the class "
                    f"list (the ids are kept as given)")
    for split, per_class in counts.items():
        absent = [c for c, k, t in zip(classes, per_class, total) if k == 0 and t > 0]
        if absent:
            fix = ("its metrics will leave them out; use a larger --val-fraction or more rows "
                   "of them" if split != "train" else "the model never sees them in training")
            log.warning(f"class(es) {_names(absent)} have no labels in the {split} split: {fix}")


def _names(names: list[str]) -> str:
    return ", ".join(map(repr, names[:8])) + (" ..." if len(names) > 8 else "")
