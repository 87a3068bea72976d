"""All tensor traffic: nonblocking sends and receives, collectives, and the host staging of CUDA tensors.

Tensors travel with buffer (upper case) mpi4py methods only, never pickle. CUDA tensors go
straight to MPI when the library is CUDA-aware and through pinned host buffers otherwise
(reused per message, because pinning memory is slow: mpirnn/distributed/staging.py). `GroupExchange` does the same for the
collectives a step repeats many times (tensor parallelism's per-time-step exchanges).

    python -m pytest -q tests/test_transport_exchange.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from mpi4py import MPI

from mpirnn.distributed.staging import StagingPool
from mpirnn.distributed.trace import Tracer


def cuda_aware() -> bool:
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query else False
    except Exception:
        return False


class CommTimer:
    """Seconds spent blocked in MPI within the step (the metrics' comm_time_s), split by kind.

    "neighbour": waiting for a point-to-point message of a sequence or pipeline neighbour (an
    incoming state or activations, their gradients, or a send's completion): the schedule's
    dependencies, bubble included. "collective": inside a collective (gradient sums over
    replicas, tensor parallelism's per-step exchanges, the linear scan). The step's small
    agreement on the loss and the gradient norm is not timed.
    `with timer.waiting("what", kind):` also records the wait as a span of the run's trace
    (mpirnn/distributed/trace.py) when tracing is on.
    """

    KINDS = ("neighbour", "collective")

    def __init__(self, tracer=None):
        self.seconds = 0.0
        self.by_kind = dict.fromkeys(self.KINDS, 0.0)
        self.tracer = tracer if tracer is not None else Tracer()
        self._label, self._kind = "MPI wait", "collective"

    def waiting(self, label: str, kind: str = "collective") -> "CommTimer":
        self._label, self._kind = label, kind
        return self

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        end = time.perf_counter()
        self.seconds += end - self._start
        self.by_kind[self._kind] += end - self._start
        if self.tracer.enabled:
            origin = self.tracer._origin
            self.tracer.record(self._label, (self._start - origin) * 1e6, (end - origin) * 1e6)
        self._label, self._kind = "MPI wait", "collective"

    def take(self) -> float:
        """The step's total, and starts the next step's count (read split() first)."""
        seconds, self.seconds = self.seconds, 0.0
        self.by_kind = dict.fromkeys(self.KINDS, 0.0)
        return seconds

    def split(self) -> dict:
        """{"comm_wait_s": waits on neighbours, "comm_collective_s": collectives} so far this step."""
        return {"comm_wait_s": self.by_kind["neighbour"], "comm_collective_s": self.by_kind["collective"]}


def host_view(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (shares memory, so MPI writes land in the tensor)."""
    return tensor.detach().numpy()


class Transfer:
    """A nonblocking send or receive of one tensor; `wait()` completes it.

    `staged` is the memory MPI reads or writes; for a received CUDA tensor it is a host
    buffer copied into `tensor` on completion. `release` (if any) then hands a lent staging
    buffer back to its pool.
    """

    def __init__(self, request, tensor=None, staged=None, timer=None, label="MPI wait", release=None):
        self.request, self.tensor, self.staged, self.timer, self.label = request, tensor, staged, timer, label
        self.release = release

    def arrived(self) -> bool:
        """Whether the transfer has completed (without blocking; it still needs `wait()`)."""
        return self.request.Test()

    def wait(self) -> torch.Tensor | None:
        if self.timer is not None:
            with self.timer.waiting(self.label, "neighbour"):
                self.request.Wait()
        else:
            self.request.Wait()
        if self.staged is not None and self.tensor is not None:
            self.tensor.copy_(self.staged, non_blocking=False)
        if self.release is not None:
            self.release()
            self.release = None
        return self.tensor


# Staging buffers of point-to-point messages (mpirnn/distributed/staging.py): made on first use,
# so importing this module touches no CUDA.
_STAGING: StagingPool | None = None


def staging_pool() -> StagingPool:
    global _STAGING
    if _STAGING is None:
        _STAGING = StagingPool()
    return _STAGING


def _lend(key: tuple, like: torch.Tensor):
    """A staging buffer shaped like `like` for one message, and the call that gives it back."""
    pool = staging_pool()
    host, flat = pool.take(key, like.shape, like.dtype)
    return host, lambda: pool.give_back(key, flat)


def isend(comm: MPI.Comm, tensor: torch.Tensor, dest: int, tag: int, timer=None, label="send",
          stage_host: bool = False) -> Transfer:
    """Start sending `tensor`. `stage_host=True` stages a CPU tensor as if it were on a GPU
    without CUDA-aware MPI (so that path is tested without one)."""
    tensor = tensor.detach().contiguous()
    where = route(tensor.is_cuda, tensor.is_cuda and cuda_aware(), stage_host)
    if where == "staged":
        host, release = _lend(("send", id(comm), dest, tag), tensor)
        host.copy_(tensor)
        return Transfer(comm.Isend(host_view(host), dest, tag), staged=host, timer=timer, label=label,
                        release=release)
    if where == "device":
        torch.cuda.current_stream().synchronize()
        return Transfer(comm.Isend(tensor, dest, tag), tensor=None, staged=tensor, timer=timer, label=label)
    return Transfer(comm.Isend(host_view(tensor), dest, tag), staged=tensor, timer=timer, label=label)


def irecv(comm: MPI.Comm, like: torch.Tensor, source: int, tag: int, timer=None, label="receive",
          stage_host: bool = False) -> Transfer:
    """Receive into a new tensor shaped like `like` (on like's device)."""
    out = torch.empty_like(like, memory_format=torch.contiguous_format)
    where = route(out.is_cuda, out.is_cuda and cuda_aware(), stage_host)
    if where == "staged":
        host, release = _lend(("recv", id(comm), source, tag), out)
        return Transfer(comm.Irecv(host_view(host), source, tag), tensor=out, staged=host, timer=timer,
                        label=label, release=release)
    if where == "device":
        torch.cuda.current_stream().synchronize()
        return Transfer(comm.Irecv(out, source, tag), tensor=out, timer=timer, label=label)
    return Transfer(comm.Irecv(host_view(out), source, tag), tensor=out, timer=timer, label=label)


# -- blocking transfers and collectives (small tensors: states, summaries, parameters) ----------
# Each goes through the host when the tensor is on a GPU and MPI is not CUDA-aware; on the CPU
# MPI reads and writes the tensor's own memory.


def _on_host(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


def _timed(timer, call, *args, kind="collective"):
    if timer is None:
        return call(*args)
    with timer.waiting(call.__name__, kind):
        return call(*args)


def send(comm: MPI.Comm, tensor: torch.Tensor, dest: int, tag: int, timer=None) -> None:
    _timed(timer, comm.Send, host_view(_on_host(tensor)), dest, tag, kind="neighbour")


def recv(comm: MPI.Comm, like: torch.Tensor, source: int, tag: int, timer=None) -> torch.Tensor:
    """Receive a tensor shaped like `like`, returned on like's device."""
    host = torch.empty(like.shape, dtype=like.dtype)
    _timed(timer, comm.Recv, host_view(host), source, tag, kind="neighbour")
    return host.to(like.device)


def allgather(comm: MPI.Comm, tensor: torch.Tensor, timer=None) -> torch.Tensor:
    """Every rank's tensor, stacked along a new first dimension (on the host)."""
    mine = _on_host(tensor)
    gathered = torch.empty((comm.size, *mine.shape), dtype=mine.dtype)
    _timed(timer, comm.Allgather, host_view(mine), host_view(gathered))
    return gathered


def allreduce_sum(comm: MPI.Comm, tensor: torch.Tensor, timer=None) -> torch.Tensor:
    """The elementwise sum over the ranks of `comm` (a new host tensor)."""
    summed = _on_host(tensor).clone()
    _timed(timer, comm.Allreduce, MPI.IN_PLACE, host_view(summed), MPI.SUM)
    return summed


def reduce_sum(comm: MPI.Comm, tensor: torch.Tensor, root: int = 0, timer=None) -> torch.Tensor:
    """The elementwise sum over the ranks of `comm`, on `root` (a new tensor on tensor's device;
    zeros elsewhere)."""
    mine = _on_host(tensor)
    summed = torch.zeros_like(mine)
    _timed(timer, comm.Reduce, host_view(mine), host_view(summed), MPI.SUM, root)
    return summed.to(tensor.device)


def broadcast_(comm: MPI.Comm, tensor: torch.Tensor, root: int = 0) -> None:
    """Overwrite `tensor` on every rank with root's (in place, any device)."""
    host = _on_host(tensor)
    comm.Bcast(host_view(host), root=root)
    if comm.rank != root:
        tensor.copy_(host)


def iallreduce_sum_(comm: MPI.Comm, host: torch.Tensor):
    """Start summing a host buffer in place (gradient buckets); returns the MPI request."""
    return comm.Iallreduce(MPI.IN_PLACE, host_view(host), MPI.SUM)


def pinned_buffer(numel: int, dtype, for_device) -> torch.Tensor:
    """A host buffer for MPI; pinned when it is filled from a GPU, so the copy is one fast DMA."""
    return torch.zeros(numel, dtype=dtype, pin_memory=torch.device(for_device).type == "cuda")


# -- collectives repeated every time step (tensor parallelism's exchanges) ---------------------

def route(is_cuda: bool, device_direct: bool, stage_host: bool = False) -> str:
    """Where MPI reads and writes a tensor's bytes: "host" (a CPU tensor's own memory), "device"
    (a CUDA tensor's own memory: only when MPI is CUDA-aware) or "staged" (a pinned host copy)."""
    if is_cuda:
        return "device" if device_direct else "staged"
    return "staged" if stage_host else "host"


class GroupExchange:
    """Allgather, Reduce_scatter_block and Allreduce over one communicator, for tensors on any device.

    A tensor-parallel layer calls these once per time step with the same shapes, so every buffer
    MPI needs is made once and reused: keyed by (purpose, shape, dtype, device), at most
    `keep` of them (the oldest is dropped first: shapes that change from batch to batch cannot
    grow it without bound). Staging buffers are pinned when CUDA is present (one DMA per copy).
    A CPU tensor is handed to MPI as it is when it is contiguous (no copy); a CUDA tensor too
    when MPI is CUDA-aware (after the stream's pending kernels finish, since MPI does not know
    torch's stream). `device_direct=None` asks MPI (`cuda_aware()`); `stage_host=True` stages
    CPU tensors as if they were on a GPU, so that path is tested without one.
    """

    def __init__(self, comm: MPI.Comm, timer=None, label: str = "", device_direct: bool | None = None,
                 stage_host: bool = False, keep: int = 16):
        self.comm, self.timer, self.label = comm, timer, label
        self.device_direct = cuda_aware() if device_direct is None else device_direct
        self.stage_host, self.keep = stage_host, keep
        self.buffers: dict[tuple, torch.Tensor] = {}

    def _route(self, tensor: torch.Tensor) -> str:
        return route(tensor.is_cuda, self.device_direct, self.stage_host)

    def buffer(self, purpose: str, shape, dtype, device, pinned: bool = False) -> torch.Tensor:
        """The reused buffer for one purpose and shape (made on first use)."""
        device = device if isinstance(device, torch.device) else torch.device(device)
        key = (purpose, tuple(shape), dtype, device)
        found = self.buffers.get(key)
        if found is None:
            if len(self.buffers) >= self.keep:
                del self.buffers[next(iter(self.buffers))]
            found = self.buffers[key] = torch.empty(tuple(shape), dtype=dtype, device=device, pin_memory=pinned)
        return found

    def _staged(self, purpose: str, shape, dtype) -> torch.Tensor:
        """A host buffer standing in for a CUDA tensor: pinned (no CUDA, as in the CPU tests: plain)."""
        return self.buffer(f"staged {purpose}", shape, dtype, "cpu", pinned=torch.cuda.is_available())

    def _call(self, name: str, *args):
        method = getattr(self.comm, name)
        if self.timer is None:
            return method(*args)
        with self.timer.waiting(f"{self.label} {name}".strip()):
            return method(*args)

    @staticmethod
    def _mpi(tensor: torch.Tensor):
        """What MPI is given: a numpy view of host memory, or the CUDA tensor itself (CUDA array interface)."""
        return tensor if tensor.is_cuda else host_view(tensor)

    @staticmethod
    def _device_ready(tensor: torch.Tensor) -> None:
        """MPI reads and writes GPU memory outside torch's stream: let the queued kernels finish first."""
        if tensor.is_cuda:
            torch.cuda.current_stream().synchronize()

    def allgather(self, piece: torch.Tensor) -> torch.Tensor:
        """Every rank's piece stacked along a new first dim: [size, *piece.shape].

        Returns a reused buffer, valid until the next allgather of this shape: on piece's device,
        or pinned host memory when staged (copy it where it is needed; copy_ crosses devices).
        """
        piece = piece.detach()
        shape = (self.comm.size, *piece.shape)
        if self._route(piece) == "staged":
            send = self._staged("allgather send", piece.shape, piece.dtype)
            send.copy_(piece)
            gathered = self._staged("allgather", shape, piece.dtype)
        else:
            send = piece.contiguous()   # a contiguous tensor itself: no copy
            gathered = self.buffer("allgather", shape, piece.dtype, piece.device)
            self._device_ready(send)
        self._call("Allgather", self._mpi(send), self._mpi(gathered))
        return gathered

    def reduce_scatter_block(self, blocks: torch.Tensor) -> torch.Tensor:
        """blocks [size, ...] summed over the ranks; this rank's block returned (a new tensor on blocks' device)."""
        blocks = blocks.detach()
        if self._route(blocks) == "staged":
            send = self._staged("reduce-scatter send", blocks.shape, blocks.dtype)
            send.copy_(blocks)
            mine = self._staged("reduce-scatter", blocks.shape[1:], blocks.dtype)
            self._call("Reduce_scatter_block", self._mpi(send), self._mpi(mine), MPI.SUM)
            return mine.to(blocks.device, copy=True)   # the pinned buffer is the next step's
        send = blocks
        if not blocks.is_contiguous():
            send = self.buffer("reduce-scatter send", blocks.shape, blocks.dtype, blocks.device)
            send.copy_(blocks)
        mine = torch.empty(blocks.shape[1:], dtype=blocks.dtype, device=blocks.device)
        self._device_ready(send)
        self._call("Reduce_scatter_block", self._mpi(send), self._mpi(mine), MPI.SUM)
        return mine

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over the ranks (a new tensor on tensor's device; `tensor` is left as it was)."""
        tensor = tensor.detach()
        if self._route(tensor) == "staged":
            summed = self._staged("allreduce", tensor.shape, tensor.dtype)
            summed.copy_(tensor)
            self._call("Allreduce", MPI.IN_PLACE, self._mpi(summed), MPI.SUM)
            return summed.to(tensor.device, copy=True)
        summed = tensor.clone(memory_format=torch.contiguous_format)
        self._device_ready(summed)
        self._call("Allreduce", MPI.IN_PLACE, self._mpi(summed), MPI.SUM)
        return summed
