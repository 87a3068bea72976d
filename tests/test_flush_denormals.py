"""Binding a rank flushes subnormal floats to zero (mpirnn/distributed/device.py `flush_denormals`):
a classifier's gradient, entering only at each row's last step, would otherwise decay into
subnormal numbers that x86 computes 10-100x slower (measured 7.06 s against 0.48 s for one
2x256 LSTM step on a Xeon).

    python -m pytest -q tests/test_flush_denormals.py

In a subprocess: the setting is global to a process and the test suite's own must stay as it is.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHECK = """
import torch
from mpirnn.distributed.device import bind
tiny = torch.tensor([1e-39])            # subnormal in float32
before = (tiny * 1.0).item()
bind("cpu", 1, 0, 1)
after = (tiny * 1.0).item()
print(before > 0, after == 0.0)
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="flush-to-zero and denormals-are-zero are x86 settings (torch.set_flush_denormal)")
def test_a_bound_rank_computes_subnormals_as_zero():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
