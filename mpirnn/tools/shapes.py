"""The benchmark workloads' shapes: pure data, shared by the driver and its MPI workers.

The driver (`python -m mpirnn.bench`, mpirnn/tools/bench.py) plans runs from these and the
workers (mpirnn/tools/workloads.py) build them; neither imports the other.
"""

from __future__ import annotations

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "dp")
SHAPES = {  # data: byte tokens (LM head) or one float series (regression head)
    "W1": dict(cell="lstm", hidden=256, layers=2, embed=64, batch=32, seq_len=256, data="tokens"),
    "W2": dict(cell="lstm", hidden=128, layers=1, embed=64, batch=8, seq_len=16384, data="series"),
    "W3": dict(cell="mingru", hidden=128, layers=1, embed=64, batch=4, seq_len=16384, data="series"),
    "dp": dict(cell="lstm", hidden=256, layers=2, embed=64, batch=32, seq_len=128, data="tokens"),
    # tp: one wide layer; the recurrence's weights dominate memory and time.
    "W4": dict(cell="lstm", hidden=2048, layers=1, embed=256, batch=16, seq_len=64, data="tokens"),
    # pp at batch size 1: one long sequence through 4 layers, the only parallelism the pipeline's chunks.
    "W5": dict(cell="lstm", hidden=256, layers=4, embed=256, batch=1, seq_len=4096, data="tokens"),
}
TINY = {  # --tiny: the same structure at toy sizes, for the smoke test
    "W1": dict(hidden=16, embed=8, batch=8, seq_len=32),
    "W2": dict(hidden=16, embed=8, batch=4, seq_len=256),
    "W3": dict(hidden=16, embed=8, batch=2, seq_len=256),
    "dp": dict(hidden=16, embed=8, batch=8, seq_len=16),
    "W4": dict(hidden=32, embed=8, batch=4, seq_len=16),
    "W5": dict(hidden=16, embed=8, batch=1, seq_len=128),
}
W2_MICROBATCHES = 4   # the fastest of 1, 2, 4, 8 at sp=2 here (2 rows each); benchmarks/README.md


def shape_of(workload: str, tiny: bool) -> dict:
    return {**SHAPES[workload], **(TINY[workload] if tiny else {})}
