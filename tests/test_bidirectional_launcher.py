"""A bidirectional model trained at sp = 2 and at pp = 2 through the real launcher with every
default on.

    .venv/bin/python -m pytest -q tests/test_bidirectional_launcher.py

`mpirun -n 2 python -m mpirnn.train` on labelled rows of different lengths (per-step and
per-sequence labels), nothing turned off but the grid (parallel.sp = 2 or parallel.pp = 2),
model.bidirectional and a short run: the two opposite wavefronts train (sp), or the first stage
runs some of the second's reverse directions (pp: the default 64-wide embedding against the
second layer's 2 x 256 inputs, mpirnn/parallel/plan.py `offload_reverse`); validation reads both
directions' ends, and the job ends alone with status 0.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from launcher import Job, records
from launcher import _no_job_left_behind  # noqa: F401  (an autouse fixture: kills what a failed test left running)
from support import run_data_cli

pytestmark = pytest.mark.timeout(300)


def labelled(root, task):
    g = np.random.default_rng(5)
    rows, steps = 64, 24
    np.save(root / "x.npy", g.normal(size=(rows, steps, 3)).astype(np.float32))
    np.save(root / "y.npy", g.integers(0, 3, (rows, steps) if task == "tag" else rows))
    np.save(root / "l.npy", g.integers(2, steps + 1, rows))   # many rows end in the first half
    done = run_data_cli("prepare", "--out", root / "data", "--npy", root / "x.npy", "--labels", root / "y.npy",
                        "--lengths", root / "l.npy")
    assert done.returncode == 0, done.stderr
    return root / "data"


@pytest.mark.parametrize("axis", ["sp", "pp"])
@pytest.mark.parametrize("task", ["tag", "classify"])
def test_bidirectional_trains_on_two_ranks_with_defaults_on(tmp_path, task, axis):
    data = labelled(tmp_path, task)
    job = Job(2, {"data.path": data, "model.bidirectional": "true", f"parallel.{axis}": 2, "train.steps": 4,
                  "train.eval_every": 2, "output.metrics": tmp_path / "m.jsonl"}, base={}, cwd=tmp_path)
    status = job.wait(timeout=240)
    assert status == 0, job.report()
    assert "Traceback" not in job.stdout + "\n".join(job.stderr_lines), job.report()
    steps = [r for r in records(tmp_path / "m.jsonl") if not r.get("summary")]
    assert [r["step"] for r in steps if "loss" in r][-1] == 4, job.report()
    assert all(np.isfinite(r["loss"]) for r in steps if "loss" in r), job.report()
    assert any("val_accuracy" in r for r in records(tmp_path / "m.jsonl")), job.report()
    if axis == "pp":   # the performance model picks the microbatches; some run layer 1's reverse direction on stage 0
        assert re.search(r"reverse directions run one stage down: microbatch(es)? [\d, ]+ of layer 1 on stage 0",
                         job.stdout), job.report()


def test_validation_batches_with_fewer_rows_than_microbatches_at_pp2(tmp_path):
    # 8 microbatches of 4 rows, five of them moved to stage 0 (embed 64 against 2 x 256); the val
    # split (6 of the 64 rows) has fewer rows than 8, so validation runs 6 microbatches and only the
    # offloaded ones it still has (mpirnn/parallel/plan.py `Plan.with_microbatches`).
    data = labelled(tmp_path, "classify")
    job = Job(2, {"data.path": data, "model.bidirectional": "true", "parallel.pp": 2, "parallel.microbatches": 8,
                  "train.steps": 2, "train.eval_every": 1, "output.metrics": tmp_path / "m.jsonl"},
              base={}, cwd=tmp_path)
    status = job.wait(timeout=240)
    assert status == 0, job.report()
    assert "one stage down: microbatches 1, 2, 4, 5, 7 of layer 1 on stage 0" in job.stdout, job.report()
    assert sum("val_accuracy" in r for r in records(tmp_path / "m.jsonl")) >= 2, job.report()
