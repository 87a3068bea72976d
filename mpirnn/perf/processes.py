"""How measurement processes start: the mpirun beside this Python, and glibc settings that keep freed memory.

Used by the calibration (mpirnn/perf/calibrate.py) and the benchmark (mpirnn/tools/bench.py), so
both time steps under the same conditions.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def mpiexec() -> str:
    found = os.environ.get("MPIEXEC") or shutil.which("mpirun", path=str(Path(sys.executable).parent)) \
        or shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpirnn: no mpirun found: `pip install mpich` (or set MPIEXEC)")
    return found


# glibc hands blocks over its mmap threshold (at most 32 MiB) back to the kernel when freed, so
# every step faults its large activations in again, which costs a 1-rank step far more than
# the smaller tensors of a segment (benchmarks/README.md). These keep freed memory in the heap.
KEEP_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36)}
