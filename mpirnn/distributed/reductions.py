"""Every reduction training needs, each named for its purpose and run over the right group.

No rank is assumed to hold the whole model or the loss: under pipeline parallelism the
loss lives on the last stage and each stage holds its own layers (mpirnn/distributed/mesh.py
names the groups). With these, the loss, the gradient norm, clipping and the non-finite
checks are the same numbers as on one process.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from mpi4py import MPI

from mpirnn.distributed.transport import broadcast_


# As torch.nn.utils.clip_grad_norm_, so a clipped step equals the serial reference's.
CLIP_EPS = 1e-6


def broadcast_parameters(model, comms) -> None:
    """Replica 0's parameters on every replica (equal already by seeding; this makes it certain)."""
    for tensor in model.state_dict().values():
        broadcast_(comms.replicas, tensor, root=0)


def gradient_norm(params, comms) -> float:
    """The global gradient norm: squares summed over the disjoint parts of the model.

    Call after the gradients are summed over replicas (they are then equal on every replica,
    so each replica's model-parallel group computes the same norm).
    """
    # Parameters replicated over a tp group (embedding, head) count on its rank 0 only.
    counted = [p for p in params if p.grad is not None
               and not (getattr(p, "tp_replicated", False) and comms.coords["tp"] != 0)]
    square = np.array([sum(float(torch.linalg.vector_norm(p.grad, dtype=torch.float64)) ** 2 for p in counted)],
                      dtype=np.float64)
    if comms.model_parallel.size > 1:
        comms.model_parallel.Allreduce(MPI.IN_PLACE, square, MPI.SUM)
    return math.sqrt(square[0])


def clip_gradients(params, max_norm: float, norm: float) -> None:
    """Scale gradients so their global norm is at most max_norm (the rule of clip_grad_norm_)."""
    coefficient = max_norm / (norm + CLIP_EPS)
    if coefficient < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coefficient)


def agree_on_step(comms, loss_share: float, finite: bool, stop_signal: int) -> tuple[float, int, int]:
    """(the step's loss, how many ranks saw non-finite values, a pending stop signal), everywhere.

    The loss is the sum of the ranks' shares: each holds its rows' and segment's share on the
    last pipeline stage and 0 elsewhere, so the sum is the loss over the whole global batch.
    """
    summed = np.array([loss_share, 0.0 if finite else 1.0], dtype=np.float64)
    signals = np.array([stop_signal], dtype=np.int64)
    comms.world.Allreduce(MPI.IN_PLACE, summed, MPI.SUM)
    comms.world.Allreduce(MPI.IN_PLACE, signals, MPI.MAX)
    return float(summed[0]), int(summed[1]), int(signals[0])


def ranks_where(comms, here: bool) -> list[int]:
    """The world ranks for which `here` is true (every rank learns all of them)."""
    mine = np.array([1 if here else 0], dtype=np.int8)
    every = np.zeros(comms.world.size, dtype=np.int8)
    comms.world.Allgather(mine, every)
    return [int(r) for r in np.flatnonzero(every)]

