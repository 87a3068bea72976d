"""The local Slurm cluster runs multi-node MPI jobs the way mpirnn needs (no trainer involved).

    slurm/local-cluster.sh start && .venv/bin/python -m pytest -q tests/slurm/test_slurm_cluster.py
"""

import json
import subprocess
import time

import pytest

pytestmark = pytest.mark.slurm


def batch_script(tmp_path, body: str):
    script = tmp_path / "job.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body + "\n")
    return script


def hello_lines(text: str) -> list[dict]:
    reports = [json.loads(ln.split(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("HELLO ")]
    return sorted(reports, key=lambda r: r["rank"])


@pytest.mark.timeout(120)
def test_two_nodes_block_mapping(tmp_path, sbatch, slurm):
    """4 ranks on 2 nodes: ranks 0,1 on the first node, 2,3 on the second (block), and MPI's
    node-local rank (Split_type) agrees with SLURM_LOCALID."""
    hello = slurm.repo / "tests" / "slurm" / "hello_mpi.py"
    script = batch_script(tmp_path, f"srun --mpi=pmi2 {slurm.python} {hello}")
    job = sbatch(script, opts=["--nodes=2", "--ntasks-per-node=2", "--time=00:05:00"])
    record = job.wait(timeout=90)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), job.explain()

    reports = hello_lines(job.text())
    assert [r["rank"] for r in reports] == [0, 1, 2, 3], job.explain()
    assert {r["size"] for r in reports} == {4}
    nodes = slurm.hostnames(record["NodeList"])
    assert len(nodes) == 2 and len({r["node"] for r in reports}) == 2, job.explain()
    for r in reports:
        assert r["node"] == nodes[r["rank"] // 2], job.explain()
        assert r["slurm_localid"] == str(r["rank"] % 2), job.explain()
        assert (r["local_rank"], r["local_size"]) == (r["rank"] % 2, 2), job.explain()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["exit", "raise"])
def test_failing_rank_fails_job_quickly(tmp_path, sbatch, slurm, how):
    """One rank fails while the others wait in a barrier: the job must end FAILED within
    seconds, not hang until its time limit. 'exit' is a rank that dies (srun's
    --kill-on-bad-exit ends the step); 'raise' is an uncaught exception that
    `python -m mpi4py` turns into MPI_Abort."""
    hello = slurm.repo / "tests" / "slurm" / "hello_mpi.py"
    script = batch_script(
        tmp_path,
        f"srun --mpi=pmi2 --kill-on-bad-exit=1 {slurm.python} -m mpi4py {hello} "
        f"--fail-rank 2 --fail-how {how}",
    )
    job = sbatch(script, opts=["--nodes=2", "--ntasks-per-node=2", "--time=00:05:00"])
    record = job.wait(timeout=60)
    elapsed = time.monotonic() - job.submitted
    assert record["JobState"] == "FAILED", job.explain()
    assert record["ExitCode"] != "0:0", job.explain()
    assert "rank 2: failing on purpose" in job.text(), job.explain()
    assert elapsed < 30, f"took {elapsed:.0f}s to fail\n{job.explain()}"
    queued = subprocess.run(["squeue", "-h", "-j", job.id], capture_output=True, text=True)
    assert queued.stdout.strip() == "", f"job still queued: {queued.stdout}"
