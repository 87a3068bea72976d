"""MPI measurements for a calibration, on 2 ranks of one node: message and collective times,
whether a nonblocking allreduce progresses during compute, and how much slower a rank
computes while the other one computes too.

    python -m mpirnn.plan --calibrate     # starts `mpirun -n 2 ... --worker comm` itself

Times are the fastest of several repetitions (each the slower rank's): on a shared machine
a repetition is slow when another process took a rank's core, never fast by accident.
Sizes go from 8 B to 4 MiB, the range of mpirnn's boundary states, summaries and gradient
buckets.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from mpirnn.distributed.transport import cuda_aware

SIZES = (8, 1024, 16384, 131072, 1048576, 4194304)
QUICK_SIZES = (8, 16384, 1048576)


def _reps(nbytes: int, quick: bool) -> int:
    # Many cheap repetitions: on a busy machine the fastest is one where both ranks held a core.
    return 3 if quick else (100 if nbytes <= 131072 else 20)


def _slowest(comm: MPI.Comm, seconds: float) -> float:
    """The largest of every rank's value (buffer Allreduce: no pickling in the library)."""
    value = np.array([seconds])
    comm.Allreduce(MPI.IN_PLACE, value, MPI.MAX)
    return float(value[0])


def _same_node(comm: MPI.Comm) -> bool:
    name = np.zeros(MPI.MAX_PROCESSOR_NAME, dtype=np.uint8)
    encoded = MPI.Get_processor_name().encode()[:MPI.MAX_PROCESSOR_NAME]
    name[:len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    names = np.empty((comm.size, name.size), dtype=np.uint8)
    comm.Allgather(name, names)
    return bool((names == names[0]).all())


def _timed(comm: MPI.Comm, fn, reps: int) -> float:
    """Fastest over reps of the slower rank's time for fn()."""
    times = []
    fn()  # warm-up: connections, buffers
    for _ in range(reps):
        comm.Barrier()
        started = time.perf_counter()
        fn()
        times.append(_slowest(comm, time.perf_counter() - started))
    return min(times)


def ops(comm: MPI.Comm, sizes) -> dict:
    """{op: [[total bytes, seconds], ...]} for p2p (one way), allreduce, allgather, reduce_scatter."""
    peer = 1 - comm.rank
    out = {name: [] for name in ("p2p", "allreduce", "allgather", "reduce_scatter")}
    for nbytes in sizes:
        n = max(2, nbytes // 4)
        n -= n % 2
        send, recv = np.ones(n, dtype=np.float32), np.empty(n, dtype=np.float32)
        half = np.empty(n // 2, dtype=np.float32)
        reps = _reps(nbytes, len(sizes) < len(SIZES))

        def ping_pong():
            if comm.rank == 0:
                comm.Send(send, peer, 1)
                comm.Recv(recv, peer, 2)
            else:
                comm.Recv(recv, peer, 1)
                comm.Send(send, peer, 2)
        out["p2p"].append([n * 4, _timed(comm, ping_pong, reps) / 2])
        out["allreduce"].append([n * 4, _timed(comm, lambda: comm.Allreduce(send, recv, MPI.SUM), reps)])
        out["allgather"].append([n * 4, _timed(comm, lambda: comm.Allgather(send[:n // 2], recv), reps)])
        out["reduce_scatter"].append([n * 4, _timed(comm, lambda: comm.Reduce_scatter_block(send, half, MPI.SUM),
                                                    reps)])
    return out


def _busy(seconds: float) -> None:
    a = np.random.rand(128, 128).astype(np.float32)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = a @ a
        a /= np.abs(a).max() + 1.0


def async_progress(comm: MPI.Comm, nbytes: int = 4194304) -> float:
    """Share of a nonblocking allreduce that completes while the ranks compute (0: none, MPI waits for Wait)."""
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    blocking = _timed(comm, lambda: comm.Allreduce(MPI.IN_PLACE, buffer, MPI.SUM), 5)
    waits = []
    for _ in range(5):
        comm.Barrier()
        request = comm.Iallreduce(MPI.IN_PLACE, buffer, MPI.SUM)
        _busy(3 * blocking)
        started = time.perf_counter()
        request.Wait()
        waits.append(_slowest(comm, time.perf_counter() - started))
    return min(1.0, max(0.0, 1.0 - min(waits) / blocking))


def slowdown(comm: MPI.Comm, quick: bool) -> dict:
    """A fused LSTM layer's forward+backward alone on rank 0 (rank 1 asleep), and on both ranks at once,
    in alternating rounds; the factor compares the fastest of each."""
    import torch
    torch.set_num_threads(1)
    rows, hidden, steps = (4, 32, 16) if quick else (32, 256, 32)
    layer = torch.nn.LSTM(hidden, hidden, batch_first=True)
    x = torch.randn(rows, steps, hidden, requires_grad=True)
    grad = torch.randn(rows, steps, hidden)

    def run() -> float:   # this thread's CPU time: shared caches and memory show, other processes' turns do not
        started = time.thread_time()
        layer(x)[0].backward(grad)
        return time.thread_time() - started

    run()
    alone, together = [], []
    token = np.zeros(1, dtype=np.uint8)
    for _ in range(3 if quick else 5):   # alternate, so that a disturbance spoils one round, not one side
        comm.Barrier()
        if comm.rank == 0:   # alone: the peer sleeps (a rank blocked in MPI would spin on its core)
            alone.append(min(run() for _ in range(2)))
            comm.Send(token, dest=1, tag=77)
        else:
            while not comm.Iprobe(source=0, tag=77):
                time.sleep(0.005)
            comm.Recv(token, source=0, tag=77)
        comm.Barrier()
        together.append(_slowest(comm, min(run() for _ in range(2))))
    alone_s = np.array([min(alone) if comm.rank == 0 else 0.0])
    comm.Bcast(alone_s, root=0)
    alone_s = float(alone_s[0])
    return {"busy": comm.size, "factor": max(1.0, min(together) / alone_s), "alone_s": alone_s,
            "together_s": min(together)}


def lockstep(comm: MPI.Comm, quick: bool, steps: int = 200) -> float:
    """Extra seconds per synchronisation when ranks alternate ~0.4 ms of compute with an Allgather every
    step (tensor parallelism's rhythm): each step waits for the slower rank, so jitter adds up."""
    import torch
    torch.set_num_threads(1)
    a = torch.randn(64, 256)
    b = torch.randn(256, 256)
    piece, gathered = np.ones(4096, dtype=np.float32), np.empty(4096 * comm.size, dtype=np.float32)
    steps = 20 if quick else steps

    def work():
        for _ in range(24):   # ~0.4 ms on the development machine
            torch.mm(a, b)

    def compute_only():
        for _ in range(steps):
            work()

    def coupled():
        for _ in range(steps):
            work()
            comm.Allgather(piece, gathered)

    # The fastest of 7 runs (~80 ms each): on a shared machine a burst of load from elsewhere
    # spoiled all of 3 once (381 µs instead of 40-64 µs, W1 tp=2 predicted +46%).
    alone = _timed(comm, compute_only, 7)
    gather = _timed(comm, lambda: comm.Allgather(piece, gathered), 20)
    return max(0.0, (_timed(comm, coupled, 7) - alone) / steps - gather)


def measure(quick: bool = False) -> dict | None:
    """Everything above on MPI.COMM_WORLD (2 ranks); the result on rank 0, None elsewhere."""
    comm = MPI.COMM_WORLD
    if comm.size != 2:
        raise SystemExit(f"the communication calibration runs on 2 ranks, not {comm.size}")
    result = {"ops": ops(comm, QUICK_SIZES if quick else SIZES), "async_progress": async_progress(comm),
              "slowdown": slowdown(comm, quick), "lockstep_sync_s": lockstep(comm, quick), "same_node": _same_node(comm),
              "library": MPI.Get_library_version().splitlines()[0], "cuda_aware": cuda_aware()}
    return result if comm.rank == 0 else None
