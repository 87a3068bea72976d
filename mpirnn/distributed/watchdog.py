"""An optional watchdog (train.comm_timeout_s): a step stuck longer than that ends the job.

A background thread looks at when the current step started and what it is doing; if a
peer died or hangs, this rank is blocked inside MPI, so the thread prints which step
and phase it waits in and ends the process. It exits rather than calling MPI_Abort:
an Abort from a second thread while the main thread sits inside MPI crashed MPICH now
and then (a segfault after the message). A rank that exits without MPI_Finalize makes
the launcher (mpirun's hydra, or srun --kill-on-bad-exit) end every other rank.
"""

from __future__ import annotations

import os
import sys
import threading
import time

EXIT_STUCK = 1


class Watchdog:
    def __init__(self, timeout_s: float, comms):
        self.timeout_s, self.comms = timeout_s, comms
        self.step, self.what, self.since = 0, "starting", None
        self.done = threading.Event()
        self.thread = None
        if timeout_s > 0:
            self.thread = threading.Thread(target=self._watch, name="mpirnn-watchdog", daemon=True)
            self.thread.start()

    def begin(self, step: int) -> None:
        self.step, self.since = step + 1, time.monotonic()

    def phase(self, what: str) -> None:
        self.what = what

    def end(self) -> None:
        self.since = None

    def stop(self) -> None:
        self.done.set()

    def _watch(self) -> None:
        while not self.done.wait(min(1.0, self.timeout_s / 4)):
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout_s:
                grid = self.comms.grid
                print(f"mpirnn: rank {self.comms.rank} of {self.comms.world.size}: step {self.step} has been stuck for "
                      f"more than train.comm_timeout_s = {self.timeout_s:g} s while {self.what} "
                      f"(sp peers {_peers(self.comms, 'sp')}, gradient peers: all {self.comms.replicas.size} replicas; "
                      f"grid dp={grid.dp} sp={grid.sp}); a peer has probably died or hangs: aborting the job",
                      file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(EXIT_STUCK)


def _peers(comms, axis: str) -> str:
    comm = comms.axis[axis]
    if comm.size == 1:
        return "none"
    here = comm.rank
    return ", ".join(f"segment {r}" for r in (here - 1, here + 1) if 0 <= r < comm.size)
