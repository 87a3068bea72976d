"""Gradient sums over replicas: bucketed, nonblocking allreduce overlapped with backward.

Parameters are grouped into buckets of about `bucket_mb` MiB in reverse registration
order (roughly the order backward produces them). A hook on each parameter notes when
its gradient is complete for the step; when a whole bucket is complete its flattened
gradients are sent with `Iallreduce` while backward goes on with earlier layers. Buckets
are always started in index order, because MPI requires every rank to start collectives
in the same order, and the order of hooks is not guaranteed to match across ranks.

Losses are normalized by the global element count, so the gradient of the serial loss
is the plain SUM of the ranks' gradients (not the mean).
"""

from __future__ import annotations

import threading

import torch
from mpi4py import MPI

from mpirnn.distributed.transport import iallreduce_sum_, pinned_buffer


class Bucket:
    def __init__(self, params: list[torch.nn.Parameter], device):
        self.params = params
        self.size = sum(p.numel() for p in params)
        # MPI reads host memory (no CUDA-aware MPI assumed); see transport.pinned_buffer.
        self.buffer = pinned_buffer(self.size, params[0].dtype, device)
        self.pending = 0
        self.request = None


class GradientReducer:
    """Sums gradients over `comm` (the ranks sharing these parameters) during backward."""

    def __init__(self, params, comm: MPI.Comm, bucket_mb: float = 4.0, timer=None):
        self.params = [p for p in params if p.requires_grad]
        self.comm, self.timer = comm, timer
        self.lock = threading.Lock()  # CUDA backward runs hooks on its own thread
        self.buckets: list[Bucket] = []
        limit = int(bucket_mb * 2**20)
        current, size = [], 0
        for p in reversed(self.params):
            current.append(p)
            size += p.numel() * p.element_size()
            if size >= limit:
                self.buckets.append(Bucket(current, p.device))
                current, size = [], 0
        if current:
            self.buckets.append(Bucket(current, current[0].device))
        self.bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self.expected = 1
        self.started = 0
        self.handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def begin(self, backward_passes: int = 1) -> None:
        """Call before a step's backward passes: each parameter's hook fires once per pass."""
        self.expected = backward_passes
        self.started = 0
        for bucket in self.buckets:
            bucket.pending = len(bucket.params) * backward_passes
            bucket.request = None

    def _on_grad(self, param) -> None:
        if self.comm.size == 1:
            return
        with self.lock:
            bucket = self.bucket_of[id(param)]
            bucket.pending -= 1
            self._start_ready()

    def _start_ready(self) -> None:
        while self.started < len(self.buckets) and self.buckets[self.started].pending == 0:
            self._start(self.buckets[self.started])
            self.started += 1

    def _start(self, bucket: Bucket) -> None:
        # Flatten on the gradients' device, then one copy to the host buffer (one sync on a GPU).
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype,
                          device=p.device) for p in bucket.params])
        bucket.buffer.copy_(flat)
        bucket.request = iallreduce_sum_(self.comm, bucket.buffer)
        if self.timer is not None:
            self.timer.tracer.instant(f"start gradient sum of bucket {self.buckets.index(bucket)}")

    def finish(self) -> None:
        """After backward: start buckets whose parameters got no gradient, wait, write sums back."""
        if self.comm.size == 1:
            return
        with self.lock:
            for bucket in self.buckets[self.started:]:
                bucket.pending = 0
            self._start_ready()
        requests = [b.request for b in self.buckets]
        if self.timer is not None:
            with self.timer.waiting(f"gradient sums ({len(requests)} buckets)"):
                MPI.Request.Waitall(requests)
        else:
            MPI.Request.Waitall(requests)
        for bucket in self.buckets:
            summed = bucket.buffer.to(bucket.params[0].device, non_blocking=True)
            offset = 0
            for p in bucket.params:
                n = p.numel()
                piece = summed[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = piece.clone()
                else:
                    p.grad.copy_(piece)
                offset += n
