"""Targets of a direct multi-step head (train.horizon = H, docs/forecasting.md), read from the window.

A window holds steps 0 .. T (inputs 0 .. T - 1). Two kinds of terms are scored:
- at every input step t, the head's first step ahead against step t + 1 (the one-step loss);
- at the **forecast origins** t = T - H, T - 2H, ... (every H-th step counted back from the
  window's end), also its steps 2 .. H ahead against steps t + 2 .. t + H.
The origins are spaced as `forecast` uses the head (H steps from one position, then H more from
the last of them), every origin's steps lie inside the window, and the multi-step terms cost as
much as one more head over the window (T / H origins × H steps), not H heads. Which terms exist
depends on T and H alone, never on the grid, so every rank knows the global count
(`targets_per_window`). A rank whose segment is [t0, t1) reads the window's steps t0 + 1 ..
min(t1 - 1 + H, T): its own next steps plus up to H - 1 of the segments after it, as lags read
steps before it. `HorizonTargets` carries them and is cut per unit like a targets tensor.
Pure (numpy and torch, no MPI); exercised by:
    python -m pytest -q tests/test_series_head.py
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


def origins_per_window(seq_len: int, horizon: int) -> int:
    return seq_len // horizon if horizon > 1 else 0


def targets_per_window(seq_len: int, horizon: int) -> int:
    """Scored targets of one window and feature: T one-step ones, H - 1 more at each origin."""
    return seq_len + origins_per_window(seq_len, horizon) * (horizon - 1)


def last_target_step(segment: tuple[int, int], seq_len: int, horizon: int) -> int:
    """The last window step the targets of a segment's inputs reach."""
    return min(segment[1] - 1 + horizon, seq_len)


@dataclass(frozen=True)
class HorizonTargets:
    """The window steps t0 + 1 .. min(t0 + width - 1 + H, T) of some rows: `values` [b, k, F]
    (normalized), for input steps [t0, t0 + width). Indexing [rows, steps] (slices relative to
    t0) gives a unit's part, as the wavefront takes it of any targets."""

    values: torch.Tensor
    t0: int
    width: int
    seq_len: int
    horizon: int

    def __getitem__(self, index) -> "HorizonTargets":
        rows, steps = index
        start, stop, _ = steps.indices(self.width)
        reach = last_target_step((self.t0 + start, self.t0 + stop), self.seq_len, self.horizon) - self.t0
        return replace(self, values=self.values[rows, start:reach], t0=self.t0 + start, width=stop - start)

    def to(self, device) -> "HorizonTargets":
        return replace(self, values=self.values.to(device))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def next_values(self) -> torch.Tensor:
        """Every input step's next step [b, width, F] (the one-step targets)."""
        return self.values[:, :self.width]

    def origins(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the origins among these input steps, as indices into them [m]; their steps 2 .. H
        ahead [b, m, H - 1, F])."""
        T, H = self.seq_len, self.horizon
        first = self.t0 + (T - self.t0) % H           # the first step t >= t0 with (T - t) % H == 0
        local = torch.tensor(range(first - self.t0, self.width, H), dtype=torch.long, device=self.values.device)
        ahead = torch.arange(1, H, device=self.values.device)
        return local, self.values[:, local[:, None] + ahead[None]]


def read_horizon_targets(reader, windows, seq_len: int, segment: tuple[int, int], horizon: int, dtype):
    """This rank's HorizonTargets (CPU) of the given windows."""
    last = last_target_step(segment, seq_len, horizon)
    block = reader.block(windows, seq_len, segment[0] + 1, last, dtype=dtype)
    return HorizonTargets(block, segment[0], segment[1] - segment[0], seq_len, horizon)


def window_terms(values: np.ndarray, horizon: int) -> np.ndarray:
    """Serial reference for the tests: a whole window's steps [T + 1, F] -> its targets [T, H, F],
    NaN where a term is not scored (steps 2 .. H ahead away from the origins)."""
    steps = len(values) - 1
    out = np.full((steps, horizon, values.shape[1]), np.nan)
    out[:, 0] = values[1:]
    for origin in range(steps - horizon, -1, -horizon) if horizon > 1 else ():
        out[origin, 1:] = values[origin + 2:origin + horizon + 1]
    return out
