"""Training keeps freed memory (mpirnn/distributed/device.py `keep_freed_memory`): a step that
frees its activations and allocates them again takes no new page faults, unless the user set
glibc's own MALLOC_* variables, which then stand.

    python -m pytest -q tests/test_keep_freed_memory.py

Each case runs in a fresh interpreter: glibc's settings last for the process.
"""

import os
import subprocess
import sys

import pytest

from mpirnn.distributed.device import MALLOC_SETTINGS

# Allocate and free 64 MiB (over glibc's largest mmap threshold, 32 MiB) twelve times and count
# each time's minor page faults. glibc's defaults map it afresh every time (16 k faults of 4 KiB
# pages); kept, most times find it already mapped. Not every time: the heap takes a few rounds
# to settle, and a kernel that reclaims idle pages (DAMON, as on this project's VMs) may take some
# of the kept memory back between rounds; a training step's memory is rarely idle that long.
PROBE = """
import resource, sys, torch
from mpirnn.distributed.device import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else "default")
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20).sum()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode: str, env=None) -> tuple[str, list[int]]:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_SETTINGS} | (env or {})
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    status, *faults = done.stdout.split()
    return status, [int(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_mostly_not_faulted_in_again():
    status, kept = probe("keep")
    _, default = probe("default")
    assert status == "kept"
    assert min(default) > 16000, default   # every time afresh
    assert sum(f < 1000 for f in kept) >= 4, kept


def test_a_users_malloc_settings_stand():
    status, _ = probe("keep", {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_MAX_": "65536"})
    assert status == "user"
