"""Targets of a direct multi-step head (train.horizon = H, docs/forecasting.md): at input step t
of a window, the values of steps t + 1 .. t + H, read from the window itself.

A window holds steps 0 .. T (inputs 0 .. T - 1, targets 1 .. T), so step t + h exists only for
t + h <= T: the steps past the window's end are NaN and not scored. Which terms are present
depends on t and h alone, never on the grid, so every rank knows the global count
(`targets_per_window`) and the loss stays a sum over present terms divided by it. A rank whose
segment is [t0, t1) reads steps t0 + 1 .. min(t1 - 1 + H, T): its own targets plus up to H - 1
steps of the segments after it, as a segment's lags read the steps before it. Pure (numpy and
torch, no MPI); exercised by:
    python -m pytest -q tests/test_series_head.py
"""

from __future__ import annotations

import numpy as np
import torch


def targets_per_window(seq_len: int, horizon: int) -> int:
    """Present targets of one window and feature: sum over t < T of min(H, T - t)."""
    return sum(min(horizon, seq_len - t) for t in range(seq_len))


def last_target_step(segment: tuple[int, int], seq_len: int, horizon: int) -> int:
    """The last window step the segment's targets reach."""
    return min(segment[1] - 1 + horizon, seq_len)


def spread(values: torch.Tensor, segment: tuple[int, int], seq_len: int, horizon: int) -> torch.Tensor:
    """Targets [B, n, H, F] of input steps [t0, t1) from `values` [B, k, F], the window steps
    t0 + 1 .. last_target_step (k of them); NaN where the step lies past the window."""
    t0, t1 = segment
    rows, features = values.shape[0], values.shape[-1]
    out = torch.full((rows, t1 - t0, horizon, features), float("nan"), dtype=values.dtype)
    for h in range(1, horizon + 1):
        present = min(t1, seq_len - h + 1) - t0     # input steps t with t + h <= T
        if present > 0:
            out[:, :present, h - 1] = values[:, h - 1:h - 1 + present]
    return out


def read_horizon_targets(reader, windows, seq_len: int, segment: tuple[int, int], horizon: int, dtype):
    """This rank's targets [B, n, H, F] (CPU) of the given windows."""
    last = last_target_step(segment, seq_len, horizon)
    block = reader.block(windows, seq_len, segment[0] + 1, last, dtype=dtype)
    return spread(block, segment, seq_len, horizon)


def windows_of_targets(values: np.ndarray, horizon: int) -> np.ndarray:
    """Serial reference for the tests: a whole window's steps [T + 1, F] -> targets [T, H, F]."""
    steps = len(values) - 1
    out = np.full((steps, horizon, values.shape[1]), np.nan)
    for t in range(steps):
        for h in range(1, horizon + 1):
            if t + h <= steps:
                out[t, h - 1] = values[t + h]
    return out
