"""A scaling sweep over 1 and 2 nodes on the local cluster, then the report table and plots.

    slurm/local-cluster.sh start && .venv/bin/python -m pytest -q tests/slurm/test_scaling_sweep.py
"""

import csv
import subprocess

import pytest

pytestmark = pytest.mark.slurm

MODEL = ["--set", "model.hidden=16", "--set", "model.layers=1", "--set", "model.embed=8",
         "--set", "data.seq_len=32", "--set", "data.batch_size=8", "--set", "output.progress=false",
         "--set", "output.sample_bytes=0"]


@pytest.mark.timeout(420)
def test_sweep_one_and_two_nodes_gives_table_and_plots(tmp_path, slurm):
    data = tmp_path / "data"
    subprocess.run([str(slurm.python), "-m", "mpirnn.data", "prepare", "--out", str(data), "--stdlib",
                    "--max-bytes", "100000"], check=True, timeout=120, cwd=slurm.repo)
    results = tmp_path / "results"
    sweep = subprocess.run([str(slurm.python), "-m", "mpirnn.scaling", "--out", str(results), "--nodes", "1,2",
                            "--strategies", "dp,sp", "--modes", "strong", "--tasks-per-node", "1", "--steps", "6",
                            "--set", f"data.path={data}", *MODEL, "--wait", "300"],
                           cwd=slurm.repo, capture_output=True, text=True, timeout=360, env=slurm.clean_env())
    outputs = "\n".join(p.read_text() for p in results.glob("*/slurm-*.out"))
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr + outputs
    report = subprocess.run([str(slurm.python), "-m", "mpirnn.report", str(results)],
                            cwd=slurm.repo, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr + outputs
    rows = list(csv.DictReader((results / "report.csv").open()))
    assert sorted((r["strategy"], int(r["nodes"]), int(r["ranks"])) for r in rows) == [
        ("dp", 1, 1), ("dp", 2, 2), ("sp", 1, 1), ("sp", 2, 2)]
    for row in rows:
        assert float(row["step_time_s"]) > 0 and 0 <= float(row["comm_share"]) < 1
        if int(row["nodes"]) == 1:
            assert float(row["speedup"]) == 1.0
    # Same global problem on every grid (strong scaling): the same losses, whatever the nodes.
    final = {(r["strategy"], r["nodes"]): float(r["final_loss"]) for r in rows}
    assert final["dp", "2"] == pytest.approx(final["dp", "1"], rel=1e-4)
    assert final["sp", "2"] == pytest.approx(final["sp", "1"], rel=1e-4)
    for plot in ("speedup.png", "efficiency.png"):
        assert (results / plot).stat().st_size > 1000
