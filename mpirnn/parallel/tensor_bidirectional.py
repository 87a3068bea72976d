"""Tensor parallelism for bidirectional layers: each direction's hidden units split over the tp group.

Rank k owns units [k*h, (k+1)*h) of the forward *and* of the reverse direction, with the rows
of both directions' gate weights that produce them (`weight_ih_l0_reverse`, ...; the same row
blocks as the forward ones, so checkpoints cut both alike, mpirnn/parallel/shard.py). Each
direction is the one-direction machinery of mpirnn/parallel/tensor.py: the reverse direction
runs `ShardedRecurrence` (or the linear cell's scan) over each row flipped within its length
(mpirnn/models/bidirectional.py) and flips its gathered outputs back; the layer's outputs are
[forward; reverse], whole on every rank. x is copied to the group once, so its gradient is summed
over the ranks once for both directions.

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_bidirectional_exact.py
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpirnn.models import cells
from mpirnn.models.bidirectional import DIRECTIONS, flip_rows, reverse_index, reverse_scan
from mpirnn.models.linear_cells import log_state
from mpirnn.models.scan import log_scan
from mpirnn.parallel.tensor import (CopyToGroup, GatherHidden, ShardedRecurrence, TensorGroup, _gate_rows,
                                    one_direction_slice)

SUFFIXES = ("", "_reverse")   # forward, reverse: PyTorch's parameter name suffixes


def by_direction(state: torch.Tensor) -> torch.Tensor:
    """A bidirectional state [parts*2, B, h] (part-major) as [2 directions, parts, B, h]."""
    return state.view(-1, DIRECTIONS, *state.shape[1:]).transpose(0, 1)


def part_major(forward: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
    """Two directions' states [parts, B, h] as one bidirectional state [parts*2, B, h]."""
    return torch.stack([forward, reverse], dim=1).flatten(0, 1)


class ShardedBidirectionalLayer(nn.Module):
    """A bidirectional rnn / lstm / gru layer on this rank's slice of each direction's hidden units."""

    def __init__(self, full: nn.RNNBase, cell: str, group: TensorGroup):
        super().__init__()
        self.cell, self.group = cell, group
        gates = cells.GATES[cell]
        rows = _gate_rows(gates, full.hidden_size, group)
        for suffix in SUFFIXES:
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                name = f"{kind}_l0{suffix}"
                self.register_parameter(name, nn.Parameter(getattr(full, name).detach()[rows].clone()))
        self.tp_gates = gates

    def _direction(self, x, state, suffix, active=None):
        w_ih, w_hh = getattr(self, f"weight_ih_l0{suffix}"), getattr(self, f"weight_hh_l0{suffix}")
        b_ih, b_hh = getattr(self, f"bias_ih_l0{suffix}"), getattr(self, f"bias_hh_l0{suffix}")
        if self.cell == "gru":
            return ShardedRecurrence.apply(F.linear(x, w_ih, b_ih), state, w_hh, b_hh, self.cell, self.group, active)
        return ShardedRecurrence.apply(F.linear(x, w_ih, b_ih + b_hh), state, w_hh, None, self.cell, self.group,
                                       active)

    def run_direction(self, x, state, reverse, lengths=None):
        """One direction over x [B, T, D] from that direction's state slice [parts, B, h], as
        mpirnn/models/bidirectional.py `run_direction` (sequence parallelism runs them apart): the
        reverse direction of each row from its own last valid step (`lengths[b]` in x), a row's state
        held past it, so the final state is the one at step 0 (the incoming one for a row with no
        valid step here); outputs zero past a row's length."""
        x = CopyToGroup.apply(x, self.group)
        if not reverse:
            return self._direction(x, state.contiguous(), "")
        batch, steps = x.shape[:2]
        valid = torch.full((batch,), steps, device=x.device) if lengths is None else lengths.to(x.device).clamp(0, steps)
        index = reverse_index(valid, batch, steps, x.device)
        active = torch.arange(steps, device=x.device)[:, None] < valid[None]   # [T, B]
        out, final = self._direction(flip_rows(x, index), state.contiguous(), "_reverse", active)
        return flip_rows(out * active.t().unsqueeze(-1), index), final

    def run(self, x, state, lengths=None):
        x = CopyToGroup.apply(x, self.group)
        forward_state, reverse_state = by_direction(state)
        forward, forward_final = self._direction(x, forward_state.contiguous(), "")
        index = reverse_index(lengths, x.shape[0], x.shape[1], x.device)
        reverse, reverse_final = self._direction(flip_rows(x, index), reverse_state.contiguous(), "_reverse")
        return torch.cat([forward, flip_rows(reverse, index)], dim=-1), part_major(forward_final, reverse_final)


class ShardedBidirectionalLinearCell(nn.Module):
    """Bidirectional minGRU / minLSTM on this rank's slice of each direction's hidden units."""

    def __init__(self, full, group: TensorGroup):
        super().__init__()
        self.kind, self.group = full.kind, group
        projections = full.linear.out_features // full.hidden_size
        rows = _gate_rows(projections, full.hidden_size, group)
        for suffix in SUFFIXES:
            whole = getattr(full, f"linear{suffix}")
            piece = nn.Linear(whole.in_features, len(rows), dtype=whole.weight.dtype, device=whole.weight.device)
            with torch.no_grad():
                piece.weight.copy_(whole.weight[rows])
                piece.bias.copy_(whole.bias[rows])
            setattr(self, f"linear{suffix}", piece)
        self.hidden_size = group.width
        self.tp_gates = projections

    def shared_input(self, x):
        """x as both directions read it: copied to the group once (its gradient summed once)."""
        return CopyToGroup.apply(x, self.group)

    def join(self, h):
        return GatherHidden.apply(h, self.group)

    def run(self, x, state, lengths=None):
        x = CopyToGroup.apply(x, self.group)
        forward = torch.exp(log_scan(*self.kind.activate(self.linear(x)), log_state(state[0])))
        reverse = reverse_scan(self.kind.activate, self.linear_reverse, x, state[1], lengths)
        outputs = torch.cat([GatherHidden.apply(forward, self.group), GatherHidden.apply(reverse, self.group)], -1)
        return outputs, torch.stack([forward[:, -1], reverse[:, 0]])


def bidirectional_slice(full: nn.Module, model, group: TensorGroup) -> nn.Module:
    """This rank's slice of a bidirectional layer (one-direction layers: tensor.py's own)."""
    if not model.bidirectional:
        return one_direction_slice(full, model, group)
    if model.linear:
        return ShardedBidirectionalLinearCell(full, group)
    return ShardedBidirectionalLayer(full, model.cell, group)
