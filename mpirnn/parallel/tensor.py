"""Tensor parallelism: each rank of a tp group owns H/K hidden units of every recurrent layer.

The same wide model as on one process, not K narrow ones: rank k owns units [k*h, (k+1)*h)
(h = H/K) and the rows of every gate's weights that produce them. Three paired operations
(forward / backward) are all the communication:

- `CopyToGroup`: a layer's input x is the same on every rank (forward: identity); each rank's
  input products give only part of dL/dx, so backward sums them over the group (allreduce).
- `GatherHidden`: the slices of a layer's outputs become the whole outputs (allgather);
  backward keeps this rank's slice of the (whole, already summed) gradient.
- `ShardedRecurrence` (rnn / lstm / gru): the recurrence needs the whole previous hidden
  state every step, so each step allgathers the slices; backward runs its own loop over time
  and reduce-scatters the gradient of the previous hidden state every step. The gathered
  states are the layer's outputs, so the next layer needs no exchange.

Linear cells (mingru / minlstm) are elementwise in time: only layer boundaries exchange.
The embedding and the head are replicated on the group's ranks (their gradients come out
equal everywhere); the loss is counted on tp rank 0 only. Per-step math: models/cells.py.

    python -m pytest -q tests/test_tensor_cells.py                      # the math, K = 1
    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi          # every grid with tp
"""

from __future__ import annotations

import torch
from mpi4py import MPI
from torch import nn
from torch.nn import functional as F

from mpirnn.distributed.transport import GroupExchange
from mpirnn.models import cells


class TensorGroup:
    """A tp communicator, this rank's slice of the hidden units, and the group's per-step exchanges.

    The exchanges go through mpirnn/distributed/transport.py's `GroupExchange`, the one place that
    knows how a tensor reaches MPI (its own memory on the CPU or with CUDA-aware MPI, reused
    pinned buffers otherwise) and that keeps the buffers a step reuses at every time step.
    """

    def __init__(self, comm: MPI.Comm, hidden: int, timer=None, exchange: GroupExchange | None = None):
        self.comm, self.timer = comm, timer
        self.size, self.rank = comm.size, comm.rank
        self.width = hidden // self.size
        self.slice = slice(self.rank * self.width, (self.rank + 1) * self.width)
        self.exchange = exchange if exchange is not None else GroupExchange(comm, timer, label="tp")

    def gather_into(self, piece: torch.Tensor, out: torch.Tensor) -> None:
        """Slices [..., h] of every rank into `out` [..., H] (rank k's slice at columns k*h...)."""
        if self.size == 1:
            out.copy_(piece)
            return
        gathered = self.exchange.allgather(piece)   # [K, ..., h]
        view = out.view(*out.shape[:-1], self.size, self.width)
        view.copy_(gathered.movedim(0, -2))

    def reduce_scatter(self, partial: torch.Tensor) -> torch.Tensor:
        """[..., H] summed over the ranks, this rank's slice [..., h] returned."""
        if self.size == 1:
            return partial
        blocks = partial.detach().view(*partial.shape[:-1], self.size, self.width).movedim(-2, 0)
        return self.exchange.reduce_scatter_block(blocks)

    def allreduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        return self.exchange.allreduce_sum(tensor)


class CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.group.allreduce(grad), None


class GatherHidden(torch.autograd.Function):
    @staticmethod
    def forward(ctx, piece, group):
        ctx.group = group
        out = piece.new_empty((*piece.shape[:-1], group.width * group.size))
        group.gather_into(piece, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad[..., ctx.group.slice].contiguous(), None


STEPS = {"rnn": (cells.rnn_forward, cells.rnn_backward), "lstm": (cells.lstm_forward, cells.lstm_backward),
         "gru": (cells.gru_forward, cells.gru_backward)}


class ShardedRecurrence(torch.autograd.Function):
    """The recurrence of one layer over one chunk, on this rank's slice of hidden units.

    xw [B, T, G*h]: input products of every step; state [parts, B, h]; w_hh [G*h, H];
    b_hh [G*h] for gru (None otherwise). Returns (outputs [B, T, H], final state [parts, B, h]).
    `active` [T, B] (bool, or None for every step of every row): a row's state is held where it
    is False (the reverse direction of a row past its last valid step, tensor_bidirectional.py).
    """

    @staticmethod
    def forward(ctx, xw, state, w_hh, b_hh, cell, group, active=None):
        step, _ = STEPS[cell]
        batch, steps = xw.shape[:2]
        width = group.width * group.size
        # h_full of every step (entering step t at [t]): the outputs are [1:], W_hh's gradient needs [:-1].
        hidden = xw.new_empty((steps + 1, batch, width))
        group.gather_into(state[0], hidden[0])
        times_w = cells.StepProduct(w_hh)
        saved = []
        for t in range(steps):
            extra = (b_hh, state[0]) if cell == "gru" else ()
            new, keep = step(xw[:, t], hidden[t], state, times_w, *extra)
            state = new if active is None else torch.where(active[t][None, :, None], new, state)
            saved.append(keep)
            group.gather_into(state[0], hidden[t + 1])
        ctx.cell, ctx.group, ctx.saved, ctx.active = cell, group, saved, active
        ctx.save_for_backward(hidden, w_hh)
        ctx.has_bias = b_hh is not None
        return hidden[1:].transpose(0, 1), state

    @staticmethod
    def backward(ctx, grad_outputs, grad_final):
        hidden, w_hh = ctx.saved_tensors
        _, step_back = STEPS[ctx.cell]
        group, saved = ctx.group, ctx.saved
        steps, batch = hidden.shape[0] - 1, hidden.shape[1]
        gates = w_hh.shape[0]
        parts = cells.PARTS[ctx.cell]
        dstate = grad_final.clone() if grad_final is not None else hidden.new_zeros((parts, batch, group.width))
        dpre_x = hidden.new_empty((batch, steps, gates))
        dpre_h = hidden.new_empty((steps, batch, gates)) if ctx.cell == "gru" else None
        mine = group.slice
        times_w_t = cells.StepProduct(w_hh.t())  # dpre @ W_hh, the gradient of h_full
        for t in range(steps - 1, -1, -1):
            if grad_outputs is not None:
                dstate[0] += grad_outputs[:, t, mine]
            dx, dh, direct = step_back(dstate, saved[t])
            if ctx.active is not None:   # a held row: its state's gradient passes straight through
                held = ~ctx.active[t][:, None]
                dx, dh = dx.masked_fill(held, 0), dh.masked_fill(held, 0)
                direct = torch.where(held[None], dstate, direct)
            dpre_x[:, t] = dx
            if dpre_h is not None:
                dpre_h[t] = dh
            dstate = direct
            dstate[0] += group.reduce_scatter(times_w_t(dh))
        ctx.saved = None
        products = dpre_h if dpre_h is not None else dpre_x.transpose(0, 1)
        # One product for W_hh's gradient over all steps: sum_t dpre_t^T h_full_{t-1}.
        d_w_hh = products.reshape(-1, gates).t() @ hidden[:-1].reshape(-1, hidden.shape[2])
        d_b_hh = products.sum(dim=(0, 1)) if ctx.has_bias else None
        return dpre_x, dstate, d_w_hh, d_b_hh, None, None, None


def _gate_rows(gates: int, hidden: int, group: TensorGroup) -> torch.Tensor:
    """Row indices of this rank's slice in every gate block of a [gates*H, ...] weight."""
    return torch.cat([torch.arange(g * hidden + group.slice.start, g * hidden + group.slice.stop)
                      for g in range(gates)])


def gate_blocks(gates: int, hidden: int, rank: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) rows of rank's slice in each gate block (for checkpoints: one piece each)."""
    width = hidden // size
    return [(g * hidden + rank * width, g * hidden + (rank + 1) * width) for g in range(gates)]


class ShardedRecurrentLayer(nn.Module):
    """rnn / lstm / gru layer on this rank's hidden slice, under nn.RNN/LSTM/GRU's parameter names."""

    def __init__(self, full: nn.RNNBase, cell: str, group: TensorGroup):
        super().__init__()
        self.cell, self.group = cell, group
        gates, hidden = cells.GATES[cell], full.hidden_size
        rows = _gate_rows(gates, hidden, group)
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            self.register_parameter(name, nn.Parameter(getattr(full, name).detach()[rows].clone()))
        self.tp_gates = gates

    def run(self, x, state):
        x = CopyToGroup.apply(x, self.group)
        if self.cell == "gru":
            xw = F.linear(x, self.weight_ih_l0, self.bias_ih_l0).to(x.dtype)  # float32 under autocast too
            return ShardedRecurrence.apply(xw, state, self.weight_hh_l0, self.bias_hh_l0, self.cell, self.group)
        xw = F.linear(x, self.weight_ih_l0, self.bias_ih_l0 + self.bias_hh_l0).to(x.dtype)
        return ShardedRecurrence.apply(xw, state, self.weight_hh_l0, None, self.cell, self.group)


class ShardedLinearCell(nn.Module):
    """minGRU / minLSTM on this rank's hidden slice: the cell's own gate code on sliced rows."""

    def __init__(self, full: nn.Module, group: TensorGroup):
        super().__init__()
        self.kind, self.group = type(full), group
        projections = full.linear.out_features // full.hidden_size
        rows = _gate_rows(projections, full.hidden_size, group)
        weight = full.linear.weight
        self.linear = nn.Linear(full.linear.in_features, len(rows), dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            self.linear.weight.copy_(full.linear.weight[rows])
            self.linear.bias.copy_(full.linear.bias[rows])
        self.hidden_size = group.width
        self.tp_gates = projections

    def gates(self, x):
        return self.kind.gates(self, CopyToGroup.apply(x, self.group))

    def join(self, h_slice):
        return GatherHidden.apply(h_slice, self.group)

    def run(self, x, state):
        h, last = self.kind.forward(self, x, state[0])  # forward calls self.gates: x is copied there
        return self.join(h), last.unsqueeze(0)


def one_direction_slice(full: nn.Module, model, group: TensorGroup) -> nn.Module:
    return ShardedLinearCell(full, group) if model.linear else ShardedRecurrentLayer(full, model.cell, group)


def shard_layers(model, group: TensorGroup, make_slice=one_direction_slice) -> None:
    """Replace every layer the model holds by its slice for this rank of the tp group
    (`make_slice`: bidirectional layers pass mpirnn/parallel/tensor_bidirectional.py's)."""
    if group.size == 1:
        return
    for index in model.owned_layers:
        model.layers[index] = make_slice(model.layers[index], model, group)
    model.state_width = group.width
    for module in (model.input, model.head):
        for param in module.parameters():
            param.tp_replicated = True  # the same on every rank of the group: counted once in norms
