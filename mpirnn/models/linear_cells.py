"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"), log-space version.

Both cells make their gates from x_t alone, so the recurrence h_t = a_t h_{t-1} + b_t
is linear in h and a whole sequence is one scan (mpirnn.models.scan) instead of a loop
over time. The cells only produce (log a, log b); the scan and, on the sequence axis,
the cross-rank combination of segment summaries live elsewhere. No MPI here.

Exercise: python -m pytest -q tests/test_linear_cells.py
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mpirnn.models.scan import log_scan


def log_g(p: torch.Tensor) -> torch.Tensor:
    """log g(p), g(p) = p + 0.5 for p >= 0 else sigmoid(p): the paper's positive activation.

    Computed per branch so neither side overflows: log(relu(p) + 0.5) is finite for all p
    and -softplus(-p) = log sigmoid(p) is exact for large negative p.
    """
    return torch.where(p >= 0, torch.log(F.relu(p) + 0.5), -F.softplus(-p))


def log_state(h: torch.Tensor) -> torch.Tensor:
    """log of a state tensor in linear space; h = 0 gives -inf.

    The gradient is 0 where h = 0 (not NaN). States are positive after one step
    (b > 0), so only a zero initial state hits that case, and it needs no gradient.
    """
    positive = h > 0
    return torch.where(positive, torch.log(torch.where(positive, h, 1.0)), -math.inf)


def _projected(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The gate pre-activations in the parameters' dtype: under autocast (train.precision = bf16)
    the projection runs in bf16, but the gates and the log-space scan after it need float32."""
    return linear(x).to(linear.weight.dtype)


class _LinearCell(nn.Module):
    """Shared driver: subclasses say how x becomes (log a, log b)."""

    def __init__(self, input_size: int, hidden_size: int, n_projections: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        # One Linear for all pre-activations: one matmul over [B, T, D] per layer.
        self.linear = nn.Linear(input_size, n_projections * hidden_size)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_a, log_b), each [B, T, H], for inputs x [B, T, D]."""
        raise NotImplementedError

    @staticmethod
    def log_state(h: torch.Tensor) -> torch.Tensor:
        """log of a state [B, H] (0 -> -inf), as the parallel code passes states."""
        return log_state(h)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        """Serial reference: the whole sequence in one scan.

        x [B, T, D]; h0 [B, H] in linear space (>= 0) or None for zeros.
        Returns (h [B, T, H], h_last [B, H]), both in linear space.
        """
        log_a, log_b = self.gates(x)
        log_h0 = None if h0 is None else log_state(h0)
        h = torch.exp(log_scan(log_a, log_b, log_h0))
        return h, h[:, -1]


class MinGRU(_LinearCell):
    """minGRU: z = sigmoid(k), h_t = (1 - z) h_{t-1} + z g(p), with [k, p] = Linear(x)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, 2)

    def gates(self, x):
        return MinGRU.activate(_projected(self.linear, x))

    @staticmethod
    def activate(projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a, log b) from the pre-activations [k, p] (also the reverse direction's,
        mpirnn/models/bidirectional.py)."""
        k, p = projected.chunk(2, dim=-1)
        log_a = -F.softplus(k)  # log(1 - sigmoid(k))
        log_z = -F.softplus(-k)  # log sigmoid(k)
        return log_a, log_z + log_g(p)


class MinLSTM(_LinearCell):
    """minLSTM: forget and input gates normalised to sum to one, h_t = f' h_{t-1} + i' g(p).

    f' = f / (f + i) with f = sigmoid(f_pre), i = sigmoid(i_pre); in logs,
    log f' = -softplus(log i - log f), log i' = -softplus(log f - log i).
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, 3)

    def gates(self, x):
        return MinLSTM.activate(_projected(self.linear, x))

    @staticmethod
    def activate(projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log f', log i' + log g(p)) from the pre-activations [f, i, p]."""
        f, i, p = projected.chunk(3, dim=-1)
        diff = F.softplus(-f) - F.softplus(-i)  # log i - log f
        log_f = -F.softplus(diff)
        log_i = -F.softplus(-diff)
        return log_f, log_i + log_g(p)
