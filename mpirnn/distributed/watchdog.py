"""The watchdog: a step (or checkpoint write) stuck far longer than it should ends the job.

On by default (train.comm_timeout_s = -1): the limit comes from the run itself,
FACTOR x the median of the recent step times, at least FLOOR_S; the first steps (start-up,
first allocations, kernel selection) get WARMUP_LIMIT_S; a val evaluation gets the step limit
once per batch it scores (a forward pass costs less than a step); a checkpoint write and the
phases after the last step (the generated sample, closing down and MPI_Finalize) get
CHECKPOINT_LIMIT_S or the step limit, whichever is larger. A positive setting is a fixed
limit in seconds for everything; 0 turns the watchdog off. docs/reliability.md has the numbers.

The watchdog stays armed until the process exits: the trainer's last act is to watch
"closing", so a rank left waiting in MPI_Finalize by a peer that never arrives is ended too.

A background thread looks at when the current phase started; if a peer died or hangs, this
rank is blocked inside MPI, so the thread prints which step and phase it waits in and ends
the process. It exits rather than calling MPI_Abort: an Abort from a second thread while the
main thread sits inside MPI crashed MPICH now and then. A rank that exits without
MPI_Finalize makes the launcher (mpirun's hydra, or srun --kill-on-bad-exit) end the others.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import deque

EXIT_STUCK = 1
AUTOMATIC = -1
WARMUP_STEPS = 5
WARMUP_LIMIT_S = 300.0
FLOOR_S = 30.0
FACTOR = 20.0
CHECKPOINT_LIMIT_S = 600.0
RECENT_STEPS = 50


def automatic_limit(step_times, checkpoint: bool = False, steps: int = 1) -> float:
    """The limit for the next step given the step times seen so far; `steps`: a phase that may
    take as long as that many steps (a val evaluation, one per batch); `checkpoint`: a checkpoint
    write or a phase after training, which gets at least CHECKPOINT_LIMIT_S."""
    if len(step_times) < WARMUP_STEPS:
        limit = WARMUP_LIMIT_S
    else:
        limit = max(FLOOR_S, FACTOR * statistics.median(step_times))
    limit *= max(1, steps)
    return max(limit, CHECKPOINT_LIMIT_S) if checkpoint else limit


class Watchdog:
    def __init__(self, setting: float, comms):
        self.setting, self.comms = setting, comms
        self.step, self.what, self.since, self.limit = 0, "starting", None, 0.0
        self.step_times: deque = deque(maxlen=RECENT_STEPS)
        self.done = threading.Event()
        self.thread = None
        if setting != 0:
            self.thread = threading.Thread(target=self._watch, name="mpirnn-watchdog", daemon=True)
            self.thread.start()

    def _limit(self, checkpoint: bool, steps: int = 1) -> float:
        return self.setting if self.setting > 0 else automatic_limit(self.step_times, checkpoint, steps)

    def begin(self, step: int, what: str = "starting the step", checkpoint: bool = False, steps: int = 1) -> None:
        """Start watching step `step` (1-based count of the step being run or saved); `checkpoint`
        and `steps` as in `automatic_limit`."""
        self.step, self.what, self.limit = step, what, self._limit(checkpoint, steps)
        self.since = time.monotonic()

    def phase(self, what: str) -> None:
        self.what = what

    def end(self, step_seconds: float | None = None) -> None:
        """Stop watching; a finished step's time feeds the automatic limit."""
        self.since = None
        if step_seconds is not None:
            self.step_times.append(step_seconds)

    def stop(self) -> None:
        self.done.set()

    def _describe_limit(self) -> str:
        if self.setting > 0:
            return f"train.comm_timeout_s = {self.setting:g} s"
        return (f"the automatic limit of {self.limit:.0f} s (train.comm_timeout_s = -1; set it to a number of "
                f"seconds, or 0 to turn the watchdog off)")

    def _watch(self) -> None:
        while not self.done.wait(min(1.0, max(0.05, self._limit(False) / 4))):
            since = self.since
            if since is not None and time.monotonic() - since > self.limit:
                grid = self.comms.grid
                print(f"mpirnn: rank {self.comms.rank} of {self.comms.world.size}: step {self.step} has been stuck for "
                      f"more than {self._describe_limit()} while {self.what} (grid dp={grid.dp} sp={grid.sp} "
                      f"pp={grid.pp} tp={grid.tp}, {_peers(self.comms)}); a peer has probably died or hangs: "
                      f"aborting the job", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(EXIT_STUCK)


def _peers(comms) -> str:
    """Who this rank waits on: its neighbours in the sp and pp chains, and its gradient replicas."""
    parts = []
    for axis, word in (("sp", "segment"), ("pp", "stage")):
        comm = comms.axis[axis]
        if comm.size > 1:
            here = comm.rank
            near = [f"{word} {r}" for r in (here - 1, here + 1) if 0 <= r < comm.size]
            parts.append(f"{axis} peers {', '.join(near)}")
    parts.append(f"gradient sums over {comms.replicas.size} replica(s)")
    return "; ".join(parts)
