"""Dropout between layers whose masks are the same on every grid: drawn from a counter-based hash.

`nn.Dropout` draws from a generator whose state depends on what ran before on this process, so
two grids (which run different rows, segments and layers per rank) would draw different masks
and stop being exact. Here each element's keep/drop is a pure function of
(train.seed, step, layer, global row, global time step, unit), hashed with a 32-bit integer
finalizer (Wellons' "lowbias32"): any rank computes any element's mask by itself, so every grid
draws the serial run's masks. As in `nn.LSTM(dropout=p)`, the inputs of every layer but the
first are dropped with probability p and the rest scaled by 1 / (1 - p); evaluation, predict and
the sample never drop anything.
    python -m pytest -q tests/test_dropout.py
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash of int64 values (low 32 bits used), elementwise, as int64 in [0, 2^32)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


@dataclass(frozen=True)
class DropoutKey:
    """Where a unit of work sits in the step: its first global row and time step."""

    rate: float
    seed: int
    step: int
    row0: int = 0
    t0: int = 0

    def at(self, rows: int, t: int) -> "DropoutKey":
        """The key of a part starting `rows` rows and `t` steps further on."""
        return DropoutKey(self.rate, self.seed, self.step, self.row0 + rows, self.t0 + t)

    def keep(self, layer: int, shape: torch.Size, device) -> torch.Tensor:
        """[b, T, D] booleans: which inputs of `layer` this part keeps."""
        b, t, d = shape
        base = hash32(torch.tensor([self.seed & MASK32], dtype=torch.int64, device=device))
        base = hash32(hash32(base + (self.step & MASK32)) + layer)
        rows = torch.arange(self.row0, self.row0 + b, device=device, dtype=torch.int64)[:, None, None]
        steps = torch.arange(self.t0, self.t0 + t, device=device, dtype=torch.int64)[None, :, None]
        units = torch.arange(d, device=device, dtype=torch.int64)[None, None, :]
        h = hash32(hash32(hash32(base + rows) + steps * 0x27D4EB2F) + units * 0x165667B1)
        return h >= int(self.rate * 2 ** 32)

    def apply(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """`x` [b, T, D], the inputs of `layer`, with dropout (the identity at rate 0)."""
        if self.rate == 0 or x.numel() == 0:
            return x
        return x * self.keep(layer, x.shape, x.device).to(x.dtype) / (1 - self.rate)
