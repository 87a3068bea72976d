"""tools/pipeline_trace: spans summed by kind, nested spans counted once, and a toy W5 traced end to end.

    python -m pytest -q tests/test_pipeline_trace.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpirnn.tools.pipeline_trace import breakdown, kind_of, nested_free
from support import mpirun_path


def span(name, ts, dur, cat="compute"):
    return {"name": name, "cat": cat, "ph": "X", "ts": ts, "dur": dur}


def test_kinds_come_from_span_names():
    assert kind_of("forward 0.3") == "forward"
    assert kind_of("loss backward 0.7") == "loss backward"
    assert kind_of("loss 0.7") == "loss and head"
    assert kind_of("embed 0.0") == "embedding"


def test_a_span_inside_another_counts_once_and_waits_by_what_they_wait_for():
    events = [span("backward 0.1", 0, 100), span("loss backward 0.1", 10, 20), span("forward 0.2", 200, 50),
              span("receive inputs 0.2 from stage 0", 150, 50, cat="mpi"),
              span("receive inputs 0.3 from stage 0", 300, 25, cat="mpi")]
    parts = breakdown(nested_free(events), 0.0, float("inf"))
    assert parts["compute"] == {"backward": pytest.approx(1e-4), "forward": pytest.approx(5e-5)}
    assert parts["wait"] == {"receive inputs": pytest.approx(7.5e-5)}


@pytest.mark.timeout(180)
def test_a_toy_pipeline_is_traced_on_both_stages():
    done = subprocess.run([str(mpirun_path()), "-n", "2", sys.executable, "-m", "mpirnn.tools.pipeline_trace",
                           "--tiny", "--steps", "2", "--warmup", "1"], capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 0 (stage 0)" in done.stdout and "rank 1 (stage 1)" in done.stdout
    assert "loss and head" in done.stdout and "the bound's step" in done.stdout
