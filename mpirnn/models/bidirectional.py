"""Bidirectional layers: a forward and a reverse direction over the same inputs, outputs
[forward; reverse] (2 x hidden). No MPI.

The reverse direction of each row starts at the row's own last valid step (PyTorch's
`pack_padded_sequence` semantics): padding after a row's end never reaches any of its outputs.
rnn / lstm / gru layers are PyTorch's own `nn.RNN/LSTM/GRU(bidirectional=True)`, run over the
packed rows where lengths differ, so their parameters keep PyTorch's names
(`weight_ih_l0_reverse`, ...). minGRU / minLSTM get a second projection `linear_reverse` and run
the reverse direction as the forward scan over each row flipped within its length.

A layer's state is [parts x 2, B, H], part-major: (h_fwd, h_rev) for rnn / gru / the linear
cells, (h_fwd, h_rev, c_fwd, c_rev) for lstm — PyTorch's (h_0, c_0) of a bidirectional module,
concatenated. Its final state (PyTorch's h_n: the reverse direction's at step 0) is never
carried anywhere: train.stateful is refused with bidirectional layers.

    python -m pytest -q tests/test_bidirectional.py
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mpirnn.models.linear_cells import log_state
from mpirnn.models.scan import log_scan

DIRECTIONS = 2


def reverse_index(lengths: torch.Tensor | None, batch: int, steps: int, device) -> torch.Tensor:
    """[B, T] time index that reverses each row within its length (steps past it stay put);
    applying it twice gives back the original order."""
    t = torch.arange(steps, device=device).expand(batch, steps)
    if lengths is None:
        return steps - 1 - t
    lengths = lengths.to(device).clamp(max=steps)[:, None]
    return torch.where(t < lengths, lengths - 1 - t, t)


def flip_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] with each row's valid steps reversed (`index` from reverse_index)."""
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def all_full(lengths: torch.Tensor | None, steps: int) -> bool:
    return lengths is None or bool((lengths >= steps).all())


def run_fused(layer: nn.RNNBase, cell: str, x: torch.Tensor, state: torch.Tensor,
              lengths: torch.Tensor | None):
    """A bidirectional nn.RNN/LSTM/GRU over x [B, T, D] from state [parts*2, B, H]; each row
    `lengths[b]` long (None: all T). Returns (outputs [B, T, 2H], zeros past each row's end;
    final state [parts*2, B, H])."""
    hx = (state[0:2].contiguous(), state[2:4].contiguous()) if cell == "lstm" else state.contiguous()
    if all_full(lengths, x.shape[1]):
        out, last = layer(x, hx)
    else:
        packed = pack_padded_sequence(x, lengths.clamp(max=x.shape[1]).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, last = layer(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, (torch.cat(last) if cell == "lstm" else last)


class BidirectionalLinearCell(nn.Module):
    """minGRU / minLSTM in both directions: `linear` (forward, the one-direction cell's name) and
    `linear_reverse`, each one projection of x to the cell's pre-activations."""

    def __init__(self, kind, input_size: int, hidden_size: int):
        super().__init__()
        self.kind, self.input_size, self.hidden_size = kind, input_size, hidden_size
        self.linear = kind(input_size, hidden_size).linear
        self.linear_reverse = kind(input_size, hidden_size).linear

    def run(self, x: torch.Tensor, state: torch.Tensor, lengths: torch.Tensor | None = None):
        """x [B, T, D], state [2, B, H] (linear space); returns (outputs [B, T, 2H], final [2, B, H])."""
        forward = torch.exp(log_scan(*self.kind.activate(self.linear(x)), log_state(state[0])))
        reverse = reverse_scan(self.kind.activate, self.linear_reverse, x, state[1], lengths)
        return torch.cat([forward, reverse], dim=-1), torch.stack([forward[:, -1], reverse[:, 0]])


def reverse_scan(activate, linear, x, h0, lengths):
    """The reverse direction of a linear cell, in the original time order: each row flipped
    within its length, scanned forward from h0, flipped back."""
    index = reverse_index(lengths, x.shape[0], x.shape[1], x.device)
    log_a, log_b = activate(linear(flip_rows(x, index)))
    return flip_rows(torch.exp(log_scan(log_a, log_b, log_state(h0))), index)
