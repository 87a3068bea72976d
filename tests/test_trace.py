"""A traced run (output.trace): one Chrome trace per rank, events ordered and never overlapping per lane.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_trace.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import make_token_dataset

MPIRUN = Path(sys.executable).parent / "mpirun"
if not MPIRUN.exists():
    MPIRUN = Path(shutil.which("mpirun") or MPIRUN)

pytestmark = pytest.mark.timeout(180)


def traced_run(tmp_path, **parallel) -> list[list[dict]]:
    """Train a tiny 2-layer byte LSTM on 2 ranks with tracing on; returns each rank's spans."""
    data = make_token_dataset(tmp_path / "tokens")
    settings = {"model.hidden": 16, "model.layers": 2, "model.embed": 8, "data.seq_len": 32, "data.batch_size": 4,
                "train.steps": parallel.pop("steps"), "output.progress": "false",
                "output.sample_bytes": 0, "data.path": data, "output.metrics": tmp_path / "m.jsonl",
                "output.trace": tmp_path / "trace", **{f"parallel.{k}": v for k, v in parallel.items()}}
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    done = subprocess.run([str(MPIRUN), "-n", "2", sys.executable, "-m", "mpirnn.train", *args], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    return [[e for e in json.loads((tmp_path / "trace" / f"rank-{rank:05d}.json").read_text())["traceEvents"]
             if e["ph"] == "X"] for rank in (0, 1)]


def first_of_each_name(spans: list[dict]) -> dict:
    """{name: the first span of that name} (the first step's)."""
    firsts = {}
    for e in spans:
        firsts.setdefault(e["name"], e)
    return firsts


def test_a_pipeline_run_writes_ordered_non_overlapping_traces(tmp_path):
    traces = traced_run(tmp_path, steps=3, pp=2, chunks=4)
    for rank, spans in enumerate(traces):
        names = [e["name"] for e in spans]
        # 3 steps x 4 chunks: every unit's forward and backward, and the optimizer of each step.
        assert sum(n.startswith("forward ") for n in names) == 12
        assert sum(n.startswith("backward ") for n in names) == 12
        assert names.count("optimizer") == 3
        assert any(n.startswith("receive ") for n in names), "the stages wait for each other somewhere"
        for lane in {e["tid"] for e in spans}:
            on_lane = sorted((e for e in spans if e["tid"] == lane), key=lambda e: e["ts"])
            assert all(e["dur"] >= 0 and e["pid"] == rank for e in on_lane)
            for a, b in zip(on_lane, on_lane[1:]):
                assert a["ts"] + a["dur"] <= b["ts"] + 1e-3, f"rank {rank} lane {lane}: {a['name']} overlaps {b['name']}"
    # The wavefront's edges (ranks on one host share the clock): in the first step stage 1 runs
    # chunk c only after stage 0 has finished it.
    stages = [first_of_each_name(spans) for spans in traces]
    for c in range(4):
        zero, one = stages[0][f"forward 0.{c}"], stages[1][f"forward 0.{c}"]
        assert one["ts"] >= zero["ts"] + zero["dur"] - 1e-3


def test_a_sequence_parallel_run_traces_each_layer_and_its_state(tmp_path):
    # sp = 2, 2 layers, 2 microbatches: each unit runs its layers one at a time and each layer's
    # boundary state travels on its own (mpirnn/parallel/wavefront.py).
    segments = []
    for rank, spans in enumerate(traced_run(tmp_path, steps=2, sp=2, microbatches=2)):
        names = [e["name"] for e in spans]
        for what in ("forward", "backward"):
            for layer in (0, 1):   # 2 steps x 2 microbatches, each layer on its own
                assert sum(n.startswith(what) and n.endswith(f"layer {layer}") for n in names) == 4, (rank, what)
        segments.append(first_of_each_name(spans))
    # Segment 1 waits for each layer's state on its own, and runs a layer only after segment 0 has.
    assert "receive state 0 layer 1 from segment 0" in segments[1]
    for layer in (0, 1):
        zero, one = segments[0][f"forward 0.0 layer {layer}"], segments[1][f"forward 0.0 layer {layer}"]
        assert one["ts"] >= zero["ts"] + zero["dur"] - 1e-3
