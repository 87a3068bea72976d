"""Exact sequence parallelism for linear-recurrent cells (mingru, minlstm): a cross-rank scan.

h_t = a_t * h_{t-1} + b_t is affine in h, so a whole segment is one affine map
h_end = A * h_start + B. Per layer, every rank scans its segment once from h = 0 (which
gives both B and the outputs a zero start would give) and sums log a for A, in parallel;
the sp ranks Allgather the S summaries (S is small, so this beats a log-depth Exscan
with a user op and needs no pickle), each rank folds the summaries before its own to get
its incoming state, and then corrects the prefix of its outputs that the incoming state
still affects (`enter_state`: the effect decays geometrically). In backward the
gradient with respect to every summary is summed over the sp ranks and each rank takes
its own. Everything is in log space (a, b > 0), like the in-segment scan.
"""

from __future__ import annotations

import torch

from mpirnn.distributed.transport import allgather, allreduce_sum
from mpirnn.models.scan import apply_summary, enter_state, log_scan


def _fold(stacked: torch.Tensor, upto: int) -> torch.Tensor:
    """Incoming log-state of segment `upto` from [S, 3, B, H] = (log_A, log_B, log_h0) per rank."""
    log_h = stacked[0, 2]
    for r in range(upto):
        log_h = apply_summary((stacked[r, 0], stacked[r, 1]), log_h)
    return log_h


class ExchangeStates(torch.autograd.Function):
    """(this segment's log_A, log_B, the true initial log-state) -> this segment's incoming log-state."""

    @staticmethod
    def forward(ctx, log_A, log_B, log_h0, comm, timer):
        gathered = allgather(comm, torch.stack([log_A, log_B, log_h0]), timer)
        ctx.comm, ctx.timer, ctx.device = comm, timer, log_A.device
        ctx.save_for_backward(gathered)
        return _fold(gathered, comm.rank).to(log_A.device)

    @staticmethod
    def backward(ctx, grad_incoming):
        (gathered,) = ctx.saved_tensors
        leaf = gathered.clone().requires_grad_()
        with torch.enable_grad():
            incoming = _fold(leaf, ctx.comm.rank)
            (grads,) = torch.autograd.grad(incoming, leaf, grad_incoming.cpu(), allow_unused=True)
        grads = allreduce_sum(ctx.comm, torch.zeros_like(leaf) if grads is None else grads, ctx.timer)
        mine = grads[ctx.comm.rank].to(ctx.device)
        return mine[0], mine[1], mine[2], None, None


def scan_layers(model, layers: range, features, state, comm, timer=None):
    """Linear layers `layers` over this rank's segment of `features` [B, T, D] with the cross-rank scan.

    `state` [len(layers), 1, B, H] is the true initial state; only segment 0's is used (every
    rank passes one, and the Allgather carries segment 0's to the others). Returns the top
    outputs and each layer's final state at the end of this segment, like `model.run_layers`.
    """
    finals = []
    for offset, index in enumerate(layers):
        log_a, log_b = model.log_gates(index, features)
        log_h_zero = log_scan(log_a, log_b, None)  # the segment entered with h = 0
        log_A, log_B = log_a.sum(dim=1), log_h_zero[:, -1]
        log_h0 = model.log_state(state[offset, 0])
        incoming = ExchangeStates.apply(log_A, log_B, log_h0, comm, timer)
        log_h = enter_state(log_a, log_h_zero, incoming)
        mine = torch.exp(log_h)
        finals.append(mine[:, -1:].transpose(0, 1))
        features = model.join_hidden(index, mine)
    return features, torch.stack(finals)
