"""Which windows make up the global batch of each step: a pure function of (seed, step).

Because the global batch does not depend on the grid, a dp=4 run and a 1-rank run see
the same samples in the same step; each rank then takes its own rows of it. Evaluation
(`sequential_batches`) takes every window of a split once, in order.

A long stream's windows start every `stride` steps (`window_stride`): non-overlapping cuts of
seq_len, or at every step (data.windows = every; by default only for a series too short to fill
a batch with cuts, which was refused before).

    python -m pytest -q tests/test_sampler.py tests/test_inference_scoring.py
"""

from __future__ import annotations

import numpy as np


def window_stride(setting: str, kind: str, stateful: bool, seq_len: int, length: int, batch_size: int,
                  horizon: int = 1) -> int:
    """Steps between the starts of consecutive training windows of a stream of `length` steps
    (data.windows). `auto` starts a series' windows at every step for a multi-step head (cuts
    would give it only seq_len / horizon forecast origins per window, each window seen once an
    epoch) and for a series too short to fill one batch with cuts; otherwise it cuts
    non-overlapping windows: measured, every-step windows fit a next-step model's next step better
    but its rolled-forward long horizons worse (docs/data.md)."""
    if setting == "every":
        return 1
    if setting == "cut" or stateful or kind != "series":
        return seq_len
    return 1 if horizon > 1 or (length - 1) // seq_len < batch_size else seq_len


def shuffled_batch(step: int, batch_size: int, n_windows: int, seed: int) -> np.ndarray:
    """Window ids of step `step`: a fresh permutation per epoch, the remainder dropped."""
    per_epoch = n_windows // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n_windows} windows cannot fill a batch of {batch_size}")
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_windows)
    return order[position * batch_size:(position + 1) * batch_size]


def lane_batch(step: int, batch_size: int, n_windows: int) -> np.ndarray:
    """Stateful order: row i reads consecutive windows of lane i, so state carries over.

    The stream is cut into `batch_size` contiguous lanes; step k reads window k of each
    lane (wrapping round at the end of a lane, where the carried state is reset).
    """
    lane_length = n_windows // batch_size
    if lane_length == 0:
        raise ValueError(f"{n_windows} windows cannot fill a batch of {batch_size}")
    return np.arange(batch_size) * lane_length + step % lane_length


def lane_restarts(step: int, batch_size: int, n_windows: int) -> bool:
    """True when stateful lanes wrap round at this step (the carried state must be zeroed)."""
    return step % (n_windows // batch_size) == 0


def sequential_batches(n_windows: int, batch_size: int, limit: int = 0) -> list[np.ndarray]:
    """Evaluation order: windows 0, 1, 2, ... in batches of `batch_size`, the last one partial.

    Every window is scored exactly once (nothing dropped, unlike a training epoch), so the
    mean loss is over the whole split; `limit` > 0 keeps only the first `limit` batches.
    """
    starts = range(0, n_windows, batch_size)
    if limit > 0:
        starts = starts[:limit]
    return [np.arange(start, min(start + batch_size, n_windows)) for start in starts]


# Bucketing sorts rows by length within pools of this many batches: enough that neighbours in a
# pool have close lengths, few enough that a batch still draws from a random tenth of a large split.
BUCKET_POOL_BATCHES = 50


def bucketed_epoch(epoch: int, batch_size: int, lengths: np.ndarray, seed: int) -> list[np.ndarray]:
    """Row ids of every batch of one epoch, rows of similar length together (data.bucket).

    The epoch's permutation (the one `shuffled_batch` uses) is cut into pools of
    BUCKET_POOL_BATCHES batches; each pool is sorted by length (longest first) and cut into
    batches, and the batches are shuffled. A function of (seed, epoch) and the lengths only.
    """
    lengths = np.asarray(lengths)
    per_epoch = len(lengths) // batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(lengths)} rows cannot fill a batch of {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))[:per_epoch * batch_size]
    pool = BUCKET_POOL_BATCHES * batch_size
    batches = []
    for start in range(0, len(order), pool):
        piece = order[start:start + pool]
        piece = piece[np.argsort(-lengths[piece], kind="stable")]
        batches += [piece[i:i + batch_size] for i in range(0, len(piece), batch_size)]
    return [batches[i] for i in rng.permutation(per_epoch)]


def longest_first(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A batch's rows, longest first (ties in row order): each microbatch's longest row then
    bounds its neighbours, so a unit's steps past it are skipped (mpirnn/parallel/wavefront.py)."""
    return rows[np.argsort(-np.asarray(lengths)[rows], kind="stable")]
