"""Exact sequence parallelism for linear-recurrent cells (mingru, minlstm): a cross-rank scan.

h_t = a_t * h_{t-1} + b_t is affine in h, so a whole segment is one affine map
h_end = A * h_start + B. Per layer, every rank scans its segment once from h = 0 (which
gives both B and the outputs a zero start would give) and sums log a for A, in parallel;
the sp ranks Allgather the S summaries (S is small, so this beats a log-depth Exscan
with a user op and needs no pickle), each rank folds the summaries before its own to get
its incoming state, and then corrects the prefix of its outputs that the incoming state
still affects (the effect decays geometrically; models.scan.enter_state is the same
correction on its own). In backward the gradient with respect to every summary is summed
over the sp ranks and each rank takes its own. Everything is in log space (a, b > 0), like
the in-segment scan. One autograd Function (`SegmentScan`) does all of it per layer, so
that no slice or summary of the segment's states costs a full-size gradient buffer.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from mpirnn.distributed.transport import allgather, allreduce_sum
from mpirnn.models.scan import (_logaddexp, apply_summary, chunked_log_scan, chunked_scan_grads,
                                default_chunk, reached_prefix)


def _fold(stacked: torch.Tensor, upto: int) -> torch.Tensor:
    """Incoming log-state of segment `upto` from [S, 3, B, H] = (log_A, log_B, log_h0) per rank."""
    log_h = stacked[0, 2]
    for r in range(upto):
        log_h = apply_summary((stacked[r, 0], stacked[r, 1]), log_h)
    return log_h


def _summary_grads(gathered: torch.Tensor, rank: int, grad_incoming: torch.Tensor, comm, timer) -> torch.Tensor:
    """dL/d(log_A, log_B, log_h0) [3, B, H] of this rank's summary, summed over every rank's incoming state."""
    leaf = gathered.clone().requires_grad_()
    with torch.enable_grad():
        incoming = _fold(leaf, rank)
        (grads,) = torch.autograd.grad(incoming, leaf, grad_incoming.cpu(), allow_unused=True)
    grads = allreduce_sum(comm, torch.zeros_like(leaf) if grads is None else grads, timer)
    return grads[rank]


class SegmentScan(torch.autograd.Function):
    """One layer's log h over this rank's segment, entered with the state the earlier segments leave.

    Forward: scan the segment from h = 0 (log_hz, chunked), Allgather the summaries
    (log_A = sum log a, log_B = log_hz at the end, and the true initial state), fold the
    earlier ones into the incoming state, and correct the prefix of log_hz that it still
    reaches (`reached_prefix`): log h_t = logaddexp(a*_t + incoming, log_hz_t) there.

    Backward, one pass with one full-size gradient buffer besides the scan's own: with w_t
    the incoming state's share of h_t on the prefix, the gradient splits into g w (to the
    incoming state and, through a*, to log a) and g (1 - w) = g hz/h (to log_hz); the
    gradient of the incoming state goes back through the fold and is summed over the ranks
    (Allreduce); each rank adds its own summary's part, log_B's to the last step of log_hz
    before the scan's backward and log_A's to every log a after it.
    """

    @staticmethod
    def forward(ctx, log_a, log_b, log_h0, comm, timer, chunk):
        log_h = chunked_log_scan(log_a, log_b, torch.full_like(log_h0, -math.inf), chunk)
        summary = torch.stack([log_a.sum(dim=1), log_h[:, -1], log_h0])
        gathered = allgather(comm, summary, timer)
        incoming = _fold(gathered, comm.rank).to(log_a.device)
        k, a_star = reached_prefix(log_a, log_h, incoming)
        head_zero = log_h[:, :k].clone()
        log_h[:, :k] = _logaddexp(a_star + incoming.unsqueeze(1), head_zero)
        ctx.save_for_backward(log_a, log_b, log_h, head_zero, a_star, incoming, gathered)
        ctx.comm, ctx.timer, ctx.chunk = comm, timer, chunk
        return log_h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        log_a, log_b, log_h, head_zero, a_star, incoming, gathered = ctx.saved_tensors
        k = head_zero.shape[1]
        through_incoming = grad[:, :k] * torch.exp(a_star + incoming.unsqueeze(1) - log_h[:, :k])
        mine = _summary_grads(gathered, ctx.comm.rank, through_incoming.sum(dim=1), ctx.comm, ctx.timer)
        mine = mine.to(log_a.device)
        grad_zero = grad.clone()
        # g (1 - w) as g hz/h, not g - g w: that cancels in float32 where the incoming state dominates.
        grad_zero[:, :k] *= torch.exp(head_zero - log_h[:, :k])
        grad_zero[:, -1] += mine[1]
        grad_a, grad_b, _ = chunked_scan_grads(log_a, log_b, torch.full_like(incoming, -math.inf), log_h,
                                               grad_zero, ctx.chunk, (True, True, False), head=head_zero)
        grad_a += mine[0].unsqueeze(1)
        # a*_t = sum of log a up to t: each log a_s gets every later step's gradient.
        grad_a[:, :k] += through_incoming.flip(1).cumsum(1).flip(1)
        return grad_a, grad_b, mine[2], None, None, None


def scan_layers(model, layers: range, features, state, comm, timer=None, noise=None):
    """Linear layers `layers` over this rank's segment of `features` [B, T, D] with the cross-rank scan.

    `state` [len(layers), 1, B, H] is the true initial state; only segment 0's is used (every
    rank passes one, and the Allgather carries segment 0's to the others). Returns the top
    outputs and each layer's final state at the end of this segment, like `model.run_layers`
    (`noise`: where the segment sits in the step, for dropout between layers, or None).
    """
    finals = []
    for offset, index in enumerate(layers):
        log_a, log_b = model.log_gates(index, model.layer_input(index, features, noise))
        log_h0 = model.log_state(state[offset, 0])
        log_h = SegmentScan.apply(log_a, log_b, log_h0, comm, timer, default_chunk(log_a.shape[1]))
        mine = torch.exp(log_h)
        finals.append(mine[:, -1:].transpose(0, 1))
        features = model.join_hidden(index, mine)
    return features, torch.stack(finals)
