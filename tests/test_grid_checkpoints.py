"""Checkpoints do not depend on the grid: written on one world size, resumed on another.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_grid_checkpoints.py

Through the real launcher (`mpirun -n N python -m mpirnn.train`), float64, a stateful GRU on a
series (so carried states are part of the checkpoint): a run stopped at step 4 on one grid and
resumed on another reproduces the uninterrupted 1-rank run's losses to 1e-10. Grids of the same
world size are covered in tests/mpi/test_training_runs.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, make_series_dataset

MPIRUN = Path(sys.executable).parent / "mpirun"
if not MPIRUN.exists():
    MPIRUN = Path(shutil.which("mpirun") or MPIRUN)

STEPS, STOP = 8, 4
COMMON = {"model.cell": "gru", "model.hidden": 12, "model.layers": 2, "model.embed": 6, "model.dtype": "float64",
          "data.seq_len": 19, "data.batch_size": 6, "train.stateful": "true", "train.lr": 0.01,
          "train.device": "cpu", "output.progress": "false", "output.sample_bytes": 0}
GRIDS = {"1 rank": (1, {}), "pp=2": (2, {"parallel.pp": 2}), "dp=2": (2, {"parallel.dp": 2}),
         "pp=2 x sp=2": (4, {"parallel.pp": 2, "parallel.sp": 2, "parallel.dp": 1}),
         "dp=2 x pp=2": (4, {"parallel.pp": 2, "parallel.dp": 2}),
         "tp=2 x pp=2": (4, {"parallel.pp": 2, "parallel.tp": 2, "parallel.dp": 1}),
         "tp=2": (2, {"parallel.tp": 2, "parallel.dp": 1})}
# (written on, resumed on): every pair crosses world sizes, in both directions.
PAIRS = [("pp=2 x sp=2", "1 rank"), ("pp=2 x sp=2", "dp=2"), ("1 rank", "pp=2"), ("pp=2", "dp=2 x pp=2"),
         ("tp=2 x pp=2", "1 rank"), ("1 rank", "tp=2")]

pytestmark = pytest.mark.timeout(300)


def train(n: int, settings: dict, cwd: Path) -> None:
    if not MPIRUN.exists():
        pytest.skip("no mpirun next to the Python interpreter or on PATH")
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(MPIRUN), "-n", str(n), sys.executable, "-m", "mpirnn.train", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{settings}\n{done.stdout}\n{done.stderr}"


def losses(metrics: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if not r.get("summary")]


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, list[float]]:
    root = tmp_path_factory.mktemp("grid-checkpoints")
    data = make_series_dataset(root / "series")
    train(1, {**COMMON, "data.path": data, "train.steps": STEPS, "output.metrics": root / "whole.jsonl"}, ROOT)
    expected = losses(root / "whole.jsonl")
    assert len(expected) == STEPS
    return data, expected


@pytest.mark.parametrize("written, resumed", PAIRS, ids=[f"{a} to {b}" for a, b in PAIRS])
def test_a_checkpoint_resumes_on_another_world_size(series, tmp_path, written, resumed):
    data, expected = series
    run = {**COMMON, "data.path": data, "checkpoint.dir": tmp_path / "ckpt", "output.metrics": tmp_path / "m.jsonl"}
    n, grid = GRIDS[written]
    train(n, {**run, **grid, "train.steps": STOP}, tmp_path)
    n, grid = GRIDS[resumed]
    train(n, {**run, **grid, "train.steps": STEPS, "checkpoint.resume": "true"}, tmp_path)
    got = losses(tmp_path / "m.jsonl")
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), f"{written} -> {resumed}"
