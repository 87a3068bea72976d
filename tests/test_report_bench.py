"""`python -m mpirnn.report` on a `python -m mpirnn.bench` results file: tables and plots.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_report_bench.py
Uses a real results file of this repository (benchmarks/results/cpu-2026-11-27/bench-all.json).
"""

import json
import shutil
from pathlib import Path

import pytest

from mpirnn.tools import report
from mpirnn.tools.report_bench import bench_rows

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu-2026-11-27" / "bench-all.json"
PNG = b"\x89PNG\r\n\x1a\n"


def test_every_timed_row_gets_its_cores_and_efficiency():
    data = json.loads(RESULTS.read_text())
    rows = {(r["workload"], r["config"]): r for r in bench_rows(data)}
    dp2 = rows[("dp", "dp=2 (-n 2)")]
    assert dp2["cores"] == 2 and dp2["efficiency"] == pytest.approx(dp2["speedup"] / 2)
    assert rows[("W1", "1 rank × 2 threads")]["cores"] == 2
    assert rows[("W5", "pp=4, C=16 (-n 4, oversubscribed)")]["cores"] == 4
    # A memory-only row (no timed steps) is left out, not drawn as zero.
    assert not any("memory only" in config for _, config in rows)


def test_report_command_writes_tables_and_plots_beside_the_results(tmp_path, capsys):
    results = tmp_path / "bench.json"
    shutil.copy(RESULTS, results)
    assert report.main([str(results)]) == 0
    text = (tmp_path / "bench-report.md").read_text()
    assert "## W1" in text and "## dp" in text and "| speedup | efficiency | target |" in text
    assert "≥ 1.5×, parameters + optimizer ≤ 55% of 1 rank, exact: met" in text   # W4's target, judged
    for name in ("speedup", "efficiency"):
        assert (tmp_path / f"bench-{name}.png").read_bytes()[:8] == PNG
