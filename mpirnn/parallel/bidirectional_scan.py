"""Bidirectional linear cells (mingru, minlstm) under sequence parallelism: each direction one cross-rank scan.

The forward direction is the one-direction cross-rank scan (mpirnn/parallel/linear_scan.py).
The reverse direction is the same idea folded the other way: h_t = a_t h_{t+1} + b_t, from each
row's own last valid step back to step 0. Every segment flips each row within its valid steps
there (so the reverse direction runs forward in the flipped order, as on one process,
mpirnn/models/bidirectional.py), scans from h = 0 and summarises itself as one affine map over
those valid steps only (a row with none there is the identity: its state passes through); the
summaries are gathered, and segment s folds those of segments S-1, ..., s+1, starting from the
initial state, into its incoming reverse state, then corrects the prefix that state reaches
(`enter_state`). Gradients flow through plain autograd: the gather's backward sums every rank's
gradient of the summaries and keeps its own.

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_bidirectional_exact.py
"""

from __future__ import annotations

import math

import torch

from mpirnn.distributed.transport import allgather, allreduce_sum
from mpirnn.models.bidirectional import flip_rows, reverse_index
from mpirnn.models.linear_cells import log_state
from mpirnn.models.scan import apply_summary, default_chunk, enter_state, log_scan
from mpirnn.parallel.linear_scan import SegmentScan


class GatherSummaries(torch.autograd.Function):
    """Every segment's summary [3, B, H], stacked [S, 3, B, H] on every rank; backward: the sum over
    the ranks of the gradient of each summary, this rank's own kept."""

    @staticmethod
    def forward(ctx, summary, comm, timer):
        ctx.comm, ctx.timer = comm, timer
        return allgather(comm, summary, timer).to(summary.device)

    @staticmethod
    def backward(ctx, grad):
        summed = allreduce_sum(ctx.comm, grad, ctx.timer)
        return summed[ctx.comm.rank].to(grad.device), None, None


def reverse_scan_segment(activate, linear, x, h0, lengths, comm, timer=None) -> torch.Tensor:
    """The reverse direction's h [B, T, H] over this segment x [B, T, D], in time order.

    `lengths`: each row's valid steps in this segment (None: all); h0 [B, H]: the initial reverse
    state (only the last segment's is used, as segment 0's is for the forward direction).
    """
    batch, steps = x.shape[:2]
    valid = torch.full((batch,), steps, device=x.device) if lengths is None else lengths.to(x.device).clamp(0, steps)
    index = reverse_index(valid, batch, steps, x.device)
    log_a, log_b = activate(linear(flip_rows(x, index)))
    log_zero = log_scan(log_a, log_b, None)
    inside = (torch.arange(steps, device=x.device)[None] < valid[:, None]).unsqueeze(-1)
    log_A = torch.where(inside, log_a, torch.zeros_like(log_a)).sum(dim=1)
    last = log_zero.gather(1, (valid - 1).clamp(min=0)[:, None, None].expand(-1, 1, log_zero.shape[2]))[:, 0]
    log_B = torch.where(valid[:, None] > 0, last, torch.full_like(last, -math.inf))
    gathered = GatherSummaries.apply(torch.stack([log_A, log_B, log_state(h0).expand_as(log_A)]), comm, timer)
    incoming = reverse_incoming(gathered, comm.rank)
    return flip_rows(torch.exp(enter_state(log_a, log_zero, incoming)), index)


def reverse_incoming(gathered: torch.Tensor, segment: int) -> torch.Tensor:
    """The reverse state entering `segment` from the gathered summaries [S, 3, B, H]: the last
    segment's initial state, through the summaries of the segments after this one, last first."""
    incoming = gathered[-1, 2]
    for r in range(gathered.shape[0] - 1, segment, -1):
        incoming = apply_summary((gathered[r, 0], gathered[r, 1]), incoming)
    return incoming


def scan_direction(model, index: int, x, state, reverse: bool, lengths, comm, timer=None):
    """One direction of bidirectional linear layer `index` over this segment: (its outputs [B, T, H],
    whole under tensor parallelism; its state [1, B, h] at the segment's end in its own direction,
    not carried anywhere: train.stateful is refused with bidirectional layers)."""
    layer = model.layers[index]
    x = layer.shared_input(x)
    if not reverse:
        log_a, log_b = layer.kind.activate(layer.linear(x))
        h = torch.exp(SegmentScan.apply(log_a, log_b, log_state(state[0]), comm, timer, default_chunk(x.shape[1])))
        final = h[:, -1]
    else:
        h = reverse_scan_segment(layer.kind.activate, layer.linear_reverse, x, state[0], lengths, comm, timer)
        final = h[:, 0]
    return layer.join(h), final.unsqueeze(0)
