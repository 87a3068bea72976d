"""The benchmark runs end to end at toy sizes: every workload reported, every exactness check passed,
the PyTorch DDP peer run under torchrun, and the performance model's prediction beside each mpirnn row.

    python -m pytest -q tests/test_bench_smoke.py

No timing is asserted (the numbers of a --tiny run mean nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpirnn.tools.shapes import WORKLOADS

pytestmark = pytest.mark.timeout(240)


def test_tiny_bench_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "mpirnn.bench", "--tiny", "--steps", "1", "--warmup", "1",
                           "--device", "cpu", "--bf16", "on", "--out", str(out)],
                          capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == []
    rows = report["rows"]
    assert {r["workload"] for r in rows} == set(WORKLOADS)
    # Every parallel row was checked against its 1-rank reference, and matched.
    checked = [r for r in rows if r["config"].startswith(("sp=", "dp=", "PyTorch DDP"))]
    assert checked and all(r["exact"] is True for r in checked), checked
    # The DDP peer ran for W1 and dp, and its ratio is reported.
    assert {r["workload"] for r in rows if r["config"].startswith("PyTorch DDP")} == {"W1", "dp"}
    assert set(report["meta"]["ddp_ratio"]) == {"W1", "dp"} and "mpirnn dp=2 / PyTorch DDP" in done.stdout
    # The model predicted every timed mpirnn row with one thread per rank (a quick calibration made first).
    timed = [r for r in rows if r["median_step_s"] and not r["config"].startswith(("plain", "PyTorch"))
             and "logcumsumexp" not in r["config"] and r["precision"] == "float32"]
    assert timed and all(r["predicted_step_s"] and r["predicted_step_s"] > 0 for r in timed), timed
    assert report["meta"]["calibration"] and "performance model:" in done.stdout
    assert any(r["workload"] == "W1" and r["config"].startswith("sp=2") and r["exact"] for r in rows)
    # W2 reports memory at 1, 2 and 4 segments, and the model's microbatch choice; W3 one row per serial
    # scan method; plain PyTorch on W1, W3.
    assert sum(r["workload"] == "W2" for r in rows) == 4
    assert sum("M by the model (M=" in r["config"] for r in rows) == 2
    assert all(r["saved_mib"] > 0 for r in rows if r["workload"] == "W2")
    assert sum(r["workload"] == "W3" and r["config"].startswith("1 rank,") for r in rows) >= 2
    assert {r["workload"] for r in rows if r["config"].startswith("plain")} == {"W1", "W3"}
    assert "| W1 |" in done.stdout  # the markdown table
    # bf16 rows (emulated where the CPU has no native bf16) beside float32 on W1, W3, W4, W5: each grid
    # within the bf16 bound of the serial bf16 run, speedups against the float32 1-rank baseline.
    bf16 = [r for r in rows if r["precision"] == "bf16"]
    assert {r["workload"] for r in bf16} == {"W1", "W3", "W4", "W5"}
    assert all(r["exact"] is True and r["rtol"] == 6e-2 and not r["baseline"] for r in bf16), bf16
    # Predicted from a bf16 calibration where bf16 is native; where it is emulated, training refuses it.
    from mpirnn.host import native_bf16
    assert all((r["predicted_step_s"] is not None) == bool(native_bf16()) for r in bf16 if r["median_step_s"]), bf16
    assert bool(report["meta"]["calibration_bf16"]) == bool(native_bf16())
    assert all(r["precision"] == "float32" for r in rows if r["baseline"])


def test_unknown_workload_refused():
    done = subprocess.run([sys.executable, "-m", "mpirnn.bench", "--only", "W9"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "unknown workload" in done.stderr


def _launched(tmp_path, group, results, exit_code):
    """A finished launch as bench.start returns it: a process that exits with exit_code, and its result file."""
    result = tmp_path / "result.json"
    result.write_text(json.dumps(results))
    process = subprocess.Popen([sys.executable, "-c", f"print('gloo: Connection closed by peer error'); "
                                f"raise SystemExit({exit_code})"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, result, group


@pytest.mark.parametrize("ddp, written, kept", [(True, 2, True), (True, 1, False), (False, 2, False)])
def test_a_failed_teardown_after_every_ddp_run_keeps_the_results(tmp_path, ddp, written, kept):
    """The DDP peer's launch failing after all its runs wrote their results (gloo aborting a rank at
    teardown) keeps the results; a failure with a run missing, or any mpirun launch's failure, is an error."""
    from mpirnn.tools.bench import finish
    group = [{"ranks": 2, "ddp": ddp, "name": f"run {i}"} for i in range(2)]
    results, error = finish(_launched(tmp_path, group, [{"name": f"run {i}"} for i in range(written)], 1), 30)
    assert len(results) == written
    assert (error is None) == kept
    if not kept:
        assert "exit 1" in error and "Connection closed" in error


def _tiny_side_by_side(tmp_path, module: str) -> tuple[dict, str]:
    """Run a side-by-side benchmark (W6, W7) at toy sizes with a toy calibration, in which a fused
    time step costs 1e-4 s per row; (its results file, its output)."""
    from test_perf_model import toy_calibration
    calibration = tmp_path / "toy.json"
    calibration.write_text(json.dumps(toy_calibration(step_per_row_s=1e-4)))
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", module, "--tiny", "--steps", "1", "--calibration", str(calibration),
                           "--out", str(out)], capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def test_tiny_variable_length_bench_end_to_end(tmp_path):
    # W7 (mpirnn/tools/bench_lengths.py): every row ran, dp=2 and sp=2 gave the 1-rank losses, and
    # bucketing computed less padding than drawing rows at random.
    # The performance model's column from a toy calibration: a fused time step costs 1e-4 s per row.
    report, _ = _tiny_side_by_side(tmp_path, "mpirnn.tools.bench_lengths")
    assert len(report["runs"]) == 4 and "| NO |" not in report["table"], report["table"]
    assert report["table"].count("| yes |") == 2, report["table"]
    assert report["padding_bucketed"] < report["padding_unbucketed"]
    # Each step predicted at its batch's longest row per valid element: 2 layers x 1e-4 s x rows x steps
    # (one microbatch at 1 rank), so padding raises the prediction per valid element above the toy cost.
    serial = report["runs"][0]
    floor = 1000 * 2 * 1e-4   # s per 1000 valid elements with no padding at all
    assert serial["predicted_s_per_1000_elements"] >= floor * 0.999
    assert all(r["predicted_s_per_1000_elements"] > 0 for r in report["runs"])


def test_tiny_bidirectional_bench_end_to_end(tmp_path):
    # W6 (mpirnn/tools/bench_bidirectional.py): every row ran with the 1-rank losses, each rank's saved
    # activations were measured (fewer per rank with more segments), and the performance model's
    # prediction stands beside every row, from a toy calibration: a fused step costs 1e-4 s per row.
    report, stdout = _tiny_side_by_side(tmp_path, "mpirnn.tools.bench_bidirectional")
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs) == ["1 rank", "sp=2 (-n 2)", "pp=2, M=4 (-n 2)", "sp=4 (-n 4)"]
    assert report["table"].count("| yes |") == 3 and "| NO |" not in report["table"], report["table"]
    saved = {name: max(r["saved_bytes_per_rank"]) for name, r in runs.items()}
    assert 0 < saved["sp=4 (-n 4)"] < saved["sp=2 (-n 2)"] < saved["1 rank"], saved
    # Toy costs: 2 layers x 2 directions x 1e-4 s x 8 rows x 64 steps at 1 rank; sp=2 swaps halves, no bubble.
    serial, sp2 = runs["1 rank"]["predicted_step_s"], runs["sp=2 (-n 2)"]["predicted_step_s"]
    assert serial == pytest.approx(2 * 2 * 1e-4 * 8 * 64, rel=1e-3)
    assert sp2 == pytest.approx(serial / 2, rel=1e-3)
    assert runs["pp=2, M=4 (-n 2)"]["microbatches_run"] == 4
    assert all(r["predicted_step_s"] > 0 for r in runs.values())
    assert "sp=2 (-n 2):" in stdout and "target" in stdout
