"""Exact sequence parallelism for nonlinear cells (rnn, lstm, gru): a boundary-state wavefront.

Rank s of the sp communicator owns time segment s. The rows are cut into microbatches;
for each microbatch rank s waits for the final states of segment s-1 (rank 0 uses the
true initial state), runs its segment with the fused PyTorch module, and sends its own
final states on with a nonblocking send, so the transfer of microbatch m overlaps the
compute of m+1 (GPipe schedule). Backward runs the chain in reverse: the gradient of
the loss with respect to a segment's final states comes from rank s+1, and the gradient
with respect to its initial states goes to rank s-1. Each rank's loss covers only its
own segment; the sum over segments is the serial loss, so nothing here is approximate.
"""

from __future__ import annotations

import torch

from mpirnn.distributed.transport import irecv, isend
from mpirnn.parallel.grid import chunk



def forward_tag(m: int) -> int:
    """Tags stay small (MPI only promises up to 32767): states of microbatch m go on 2m, their gradients on 2m+1."""
    return 2 * m


def backward_tag(m: int) -> int:
    return 2 * m + 1


def microbatch_slices(rows: int, microbatches: int) -> list[slice]:
    return [slice(*chunk(rows, microbatches, m)) for m in range(microbatches)]


def pipeline_step(model, comm, inputs, targets, state, norm: float, microbatches: int, timer=None):
    """Forward and backward of this rank's segment; returns (local loss, final states of the last segment).

    `state` is the initial state [layers, parts, rows, hidden], used only on segment 0.
    The final states returned are meaningful on the last segment only.
    """
    s, S = comm.rank, comm.size
    slices = microbatch_slices(inputs.shape[0], microbatches)
    shapes = [model.zero_state(sl.stop - sl.start, inputs) for sl in slices]
    incoming = [irecv(comm, shapes[m], s - 1, forward_tag(m), timer) for m in range(len(slices))] if s > 0 else None

    sends, graphs = [], []
    for m, rows in enumerate(slices):
        if s == 0:
            start = state[:, :, rows]
        else:
            start = incoming[m].wait().requires_grad_()
        outputs, final = model.run_stack(model.input(inputs[rows]), start)
        loss = model.loss_sum(outputs, targets[rows]) / norm
        if s < S - 1:
            sends.append(isend(comm, final, s + 1, forward_tag(m), timer))
        graphs.append((start, loss, final))

    grads_in = [irecv(comm, shapes[m], s + 1, backward_tag(m), timer) for m in range(len(slices))] if s < S - 1 else None
    total = torch.zeros((), dtype=torch.float64)
    for m, (start, loss, final) in enumerate(graphs):
        if s < S - 1:
            torch.autograd.backward([loss, final], [torch.ones_like(loss), grads_in[m].wait()])
        else:
            loss.backward()
        if s > 0:
            sends.append(isend(comm, start.grad, s - 1, backward_tag(m), timer))
        total += loss.detach().double().cpu()
    for send in sends:
        send.wait()
    final = torch.cat([f.detach() for _, _, f in graphs], dim=2)
    return total, final
