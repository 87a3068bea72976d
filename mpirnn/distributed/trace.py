"""Per-rank traces of a run (output.trace = DIR): one Chrome / Perfetto trace JSON per rank.

Spans of compute (each unit's forward and backward, the optimizer step) and of waiting in MPI
(receives of states and activations, the gradient sums, collectives), with the gradient buckets'
starts as instant events, so a user can see the wavefront and its bubble: open
DIR/rank-00000.json in https://ui.perfetto.dev or chrome://tracing. Compute runs on lane
(tid) 0 and MPI waits on lane 1; on each lane spans never overlap. Disabled (the default), a
span costs one attribute lookup.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

COMPUTE, WAIT = 0, 1


class Tracer:
    def __init__(self, rank: int = 0, enabled: bool = False):
        self.rank, self.enabled = rank, enabled
        self.events: list[dict] = []
        # Linux's perf_counter is the system-wide monotonic clock: ranks on one host line up.
        self._origin = 0.0

    def _now_us(self) -> float:
        return (time.perf_counter() - self._origin) * 1e6

    @contextlib.contextmanager
    def _span(self, name: str, cat: str, lane: int):
        start = self._now_us()
        try:
            yield
        finally:
            self.events.append({"name": name, "cat": cat, "ph": "X", "ts": start, "dur": self._now_us() - start,
                                "pid": self.rank, "tid": lane})

    def span(self, name: str, cat: str = "compute", lane: int = COMPUTE):
        return self._span(name, cat, lane) if self.enabled else contextlib.nullcontext()

    def record(self, name: str, start_us: float, end_us: float, cat: str = "mpi", lane: int = WAIT) -> None:
        if self.enabled:
            self.events.append({"name": name, "cat": cat, "ph": "X", "ts": start_us, "dur": end_us - start_us,
                                "pid": self.rank, "tid": lane})

    def instant(self, name: str, cat: str = "mpi", lane: int = WAIT) -> None:
        if self.enabled:
            self.events.append({"name": name, "cat": cat, "ph": "i", "s": "t", "ts": self._now_us(),
                                "pid": self.rank, "tid": lane})

    def write(self, directory: str | Path) -> Path | None:
        if not self.enabled:
            return None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"rank-{self.rank:05d}.json"
        meta = [{"name": "process_name", "ph": "M", "pid": self.rank, "args": {"name": f"rank {self.rank}"}},
                {"name": "thread_name", "ph": "M", "pid": self.rank, "tid": COMPUTE, "args": {"name": "compute"}},
                {"name": "thread_name", "ph": "M", "pid": self.rank, "tid": WAIT, "args": {"name": "MPI waits"}}]
        path.write_text(json.dumps({"traceEvents": meta + self.events, "displayTimeUnit": "ms"}))
        return path
