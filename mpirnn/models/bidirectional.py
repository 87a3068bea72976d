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

Under sequence parallelism each direction of a layer runs on its own (`run_direction`), so that
the forward states can travel to the next segment and the reverse ones to the previous segment
(mpirnn/parallel/bidirectional_wavefront.py).

    python -m pytest -q tests/test_bidirectional.py
"""

from __future__ import annotations

import torch
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

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


def _one_direction(layer: nn.RNNBase, cell: str, suffix: str, x: torch.Tensor, state: torch.Tensor,
                   batch_sizes: torch.Tensor | None = None):
    """PyTorch's own one-direction kernel with one direction's weights (`suffix` "" or "_reverse"):
    x [B, T, D] batch first, or packed data with `batch_sizes`; state [parts, B, H]."""
    weights = [getattr(layer, f"{kind}_l0{suffix}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    hx = (state[0:1].contiguous(), state[1:2].contiguous()) if cell == "lstm" else state.contiguous()
    head = (x, hx) if batch_sizes is None else (x, batch_sizes, hx)
    tail = (weights, True, 1, 0.0, layer.training, False) + ((True,) if batch_sizes is None else ())
    if cell == "lstm":
        out, h, c = _VF.lstm(*head, *tail)
        return out, torch.cat([h, c])
    kernel = _VF.gru if cell == "gru" else _VF.rnn_tanh if layer.nonlinearity == "tanh" else _VF.rnn_relu
    return kernel(*head, *tail)


def run_direction(layer: nn.RNNBase, cell: str, x: torch.Tensor, state: torch.Tensor, reverse: bool,
                  lengths: torch.Tensor | None = None):
    """One direction of a bidirectional nn.RNN/LSTM/GRU over x [B, T, D] from that direction's state
    [parts, B, H]. Forward: every step. Reverse: each row from its own last valid step (`lengths[b]`
    valid steps in x; None: all T) back to step 0, the same arithmetic as PyTorch's packed reverse
    direction; a row with no valid step runs nothing and its state passes through. Returns
    (outputs [B, T, H], zeros past a row's length in reverse; final state [parts, B, H])."""
    if not reverse:
        return _one_direction(layer, cell, "", x, state)
    batch, steps = x.shape[:2]
    valid = torch.full((batch,), steps) if lengths is None else lengths.cpu().clamp(0, steps)
    if bool((valid == steps).all()):
        # Every row full: a plain flip of the time axis, whose backward is a flip too (a gather's
        # is a scatter-add, 1.5-6x slower on a CPU at these widths).
        out, final = _one_direction(layer, cell, "_reverse", x.flip(1), state)
        return out.flip(1), final
    index = reverse_index(valid, batch, steps, x.device)
    flipped = flip_rows(x, index)   # each row's valid steps reversed: the reverse direction runs them forward
    live = (valid > 0).nonzero(as_tuple=True)[0]
    outputs = x.new_zeros(batch, steps, layer.hidden_size)
    if len(live) == 0:
        return outputs, state
    packed = pack_padded_sequence(flipped[live], valid[live], batch_first=True, enforce_sorted=False)
    device_live = live.to(x.device)
    start = state.index_select(1, device_live).index_select(1, packed.sorted_indices)
    data, final = _one_direction(layer, cell, "_reverse", packed.data, start, packed.batch_sizes)
    out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                                packed.unsorted_indices), batch_first=True, total_length=steps)
    final = final.index_select(1, packed.unsorted_indices)
    outputs = outputs.index_copy(0, device_live, flip_rows(out, index[device_live]))
    return outputs, state.index_copy(1, device_live, final)


class BidirectionalLinearCell(nn.Module):
    """minGRU / minLSTM in both directions: `linear` (forward, the one-direction cell's name) and
    `linear_reverse`, each one projection of x to the cell's pre-activations."""

    def __init__(self, kind, input_size: int, hidden_size: int):
        super().__init__()
        self.kind, self.input_size, self.hidden_size = kind, input_size, hidden_size
        self.linear = kind(input_size, hidden_size).linear
        self.linear_reverse = kind(input_size, hidden_size).linear

    def shared_input(self, x: torch.Tensor) -> torch.Tensor:
        """What both directions read (a tensor-parallel slice copies x to its group here)."""
        return x

    def join(self, h: torch.Tensor) -> torch.Tensor:
        """One direction's outputs from the hidden units this copy computed (all of them here)."""
        return h

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
