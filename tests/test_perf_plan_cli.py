"""`python -m mpirnn.plan` end to end with a toy calibration: JSON structure, grids, errors, projection.

    python -m pytest -q tests/test_perf_plan_cli.py
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from test_perf_model import toy_calibration

pytestmark = pytest.mark.timeout(120)


def plan(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mpirnn.plan", *args], capture_output=True, text=True,
                          timeout=100, cwd=cwd)


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy-calibration.json"
    path.write_text(json.dumps(toy_calibration(step_per_row_s=1e-4, call_s=1e-4, alpha_s=1e-5, beta_s=1e-10)))
    return path


def test_ranks_4_json(toy):
    done = plan("--ranks", "4", "--json", "--calibration", str(toy))
    assert done.returncode == 0, done.stderr
    grids = json.loads(done.stdout)
    assert grids and isinstance(grids, list)
    for entry in grids:
        assert {"grid", "microbatches", "chunks", "step_time_s", "tokens_per_s", "efficiency"} <= set(entry)
        assert set(entry["grid"]) == {"dp", "sp", "pp", "tp"}
        assert math.prod(entry["grid"].values()) == 4
        assert entry["step_time_s"] > 0 and entry["tokens_per_s"] > 0 and 0 < entry["efficiency"] <= 1.5
    times = [entry["step_time_s"] for entry in grids]
    assert times == sorted(times)
    # The default config (lstm 2 layers, hidden 256, batch 32, seq_len 128): pp ≤ 2 and tp divides 256.
    assert all(e["grid"]["pp"] <= 2 for e in grids)
    assert len({json.dumps(e["grid"], sort_keys=True) for e in grids}) == len(grids)


def test_one_grid_and_a_table(toy):
    done = plan("--ranks", "4", "--grid", "sp=2", "--set", "model.cell=gru", "--json", "--calibration", str(toy))
    assert done.returncode == 0, done.stderr
    (only,) = json.loads(done.stdout)
    assert only["grid"] == {"dp": 2, "sp": 2, "pp": 1, "tp": 1} and only["microbatches"] >= 1
    table = plan("--ranks", "2", "--calibration", str(toy))
    assert table.returncode == 0 and "| 1 |" in table.stdout and "efficiency" in table.stdout


def test_missing_calibration_is_one_line(tmp_path):
    done = plan("--ranks", "2", "--calibration", str(tmp_path / "none.json"))
    assert done.returncode == 1 and "mpirnn.plan: error:" in done.stderr and "--calibrate" in done.stderr


def test_projection_runs_on_the_derived_gpu_calibration():
    done = plan("--project", "--max-gpus", "16", "--json", "--calibration", "")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for rows in result["shapes"].values():
        assert [r["gpus"] for r in rows] == [1, 2, 4, 8, 16]
        assert all(math.prod(r["grid"].values()) == r["gpus"] for r in rows)


def test_validate_compares_a_bench_file(toy, tmp_path):
    from mpirnn.tools.shapes import SHAPES
    run = {"workload": "W1", "name": "sp=2, M=4", "median_step_s": 1.0, "quiet_steps": [1.0] * 3,
           "step_times_s": [1.0] * 3, "plain": False, "ddp": False, "threads": 1, "steps": 3, "method": None,
           "device": "cpu", "dp": 1, "sp": 2, "pp": 1, "microbatches": 4, "chunks": 0}
    skipped = {**run, "name": "1 rank × 2 threads", "sp": 1, "threads": 2}
    bench = {"meta": {"date": "2026-01-01", "cpu": "toy", "load_per_pass": [[0.1, 0.1, 0.1]], "calibration": str(toy)},
             "runs": [run, skipped], "shapes": {"W1": SHAPES["W1"]}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    done = plan("--validate", str(path), "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["config"] == "sp=2, M=4" and row["measured_s"] == 1.0 and row["predicted_s"] > 0
    assert row["error"] == pytest.approx(row["predicted_s"] - 1.0)
