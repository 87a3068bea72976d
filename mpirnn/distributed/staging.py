"""Pinned host buffers for point-to-point messages of CUDA tensors when MPI is not CUDA-aware.

Pinning memory is slow (a driver call per buffer), so a message's staging buffer is kept and
reused by the same message of the next step. Keyed by (direction, communicator, peer, tag,
dtype) and not by shape: with variable-length rows the shapes change from step to step, and a
cache keyed by shape would pin a new buffer for every new length and never let go of one.
A buffer is flat and only grows; a message uses a view of its first elements.

A buffer is lent while its message is in flight and comes back when the transfer completes,
so two messages in flight at once never share one (the wavefront's tags already name each
microbatch and chunk, so that is rare, but a reused tag cannot corrupt a message either).

    python -m pytest -q tests/test_staging_pool.py
"""

from __future__ import annotations

import torch


class StagingPool:
    """Grow-only, reusable host buffers per message key; lent while in flight."""

    def __init__(self, pinned: bool | None = None):
        # Pinned only where CUDA exists (the CPU tests stage through plain memory).
        self.pinned = torch.cuda.is_available() if pinned is None else pinned
        self.idle: dict[tuple, list[torch.Tensor]] = {}
        self.lent = 0

    def take(self, key: tuple, shape, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(a view shaped `shape`, its flat buffer to give back once the message completes)."""
        numel = 1
        for size in shape:
            numel *= int(size)
        idle = self.idle.setdefault((*key, dtype), [])
        fitting = [flat for flat in idle if flat.numel() >= numel]
        if fitting:
            flat = min(fitting, key=torch.Tensor.numel)
            idle.remove(flat)
        else:
            # Nothing idle is large enough: the idle ones are smaller than what this message
            # needs, so drop them and pin one buffer of the new size (grow only).
            idle.clear()
            flat = torch.empty(max(numel, 1), dtype=dtype, pin_memory=self.pinned)
        self.lent += 1
        return flat[:numel].view(tuple(shape)), flat

    def give_back(self, key: tuple, flat: torch.Tensor) -> None:
        self.lent -= 1
        self.idle.setdefault((*key, flat.dtype), []).append(flat)

    def held_bytes(self) -> int:
        """Bytes of idle buffers kept for reuse (what the pool holds between steps)."""
        return sum(flat.numel() * flat.element_size() for idle in self.idle.values() for flat in idle)
