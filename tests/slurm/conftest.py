"""Helpers for the tests that run real jobs on the local Slurm cluster.

    slurm/local-cluster.sh start && .venv/bin/python -m pytest -q tests/slurm -m slurm

Tests marked `slurm` are skipped when the cluster is not up. Every wait on a job has its own
deadline; on failure it cancels the job and shows the job's output file and Slurm's record.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)

SKIP_REASON = "local Slurm cluster not running: start it with slurm/local-cluster.sh start"
# Job states after which a job never runs again (REQUEUED and PENDING are not among them).
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs the local Slurm cluster (slurm/local-cluster.sh start)"
    )


@functools.cache
def cluster_problem() -> str | None:
    """Why the cluster cannot run a 2-node job, or None when it can."""
    try:
        run = subprocess.run(
            ["sinfo", "-h", "-o", "%t %D"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo: {exc}"
    if run.returncode != 0:
        return "sinfo failed: " + (run.stderr.strip().splitlines() or ["no message"])[-1]
    idle = sum(int(n) for state, n in (line.split() for line in run.stdout.splitlines())
               if state.rstrip("*") in ("idle", "mix"))
    return None if idle >= 2 else f"{idle} idle nodes: {run.stdout.strip()!r}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # At collection, not in a fixture: module-scoped fixtures (a reference run) would
    # otherwise run before a function-level skip.
    marked = [item for item in items if item.get_closest_marker("slurm")]
    if marked and (why := cluster_problem()):
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=f"{SKIP_REASON} ({why})"))


def job_record(job_id: str) -> dict[str, str]:
    """Slurm's view of a job: `scontrol show job` while slurmctld keeps it (MinJobAge),
    else its line in the jobcomp file (there is no accounting database here)."""
    run = subprocess.run(["scontrol", "-o", "show", "job", job_id],
                         capture_output=True, text=True, timeout=15)
    text = run.stdout if run.returncode == 0 else _jobcomp_line(job_id)
    return dict(re.findall(r"(\w+)=(\S*)", text))


def _jobcomp_line(job_id: str) -> str:
    run = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15)
    loc = re.search(r"^JobCompLoc\s*=\s*(\S+)", run.stdout, re.M)
    if not loc or not Path(loc.group(1)).is_file():
        return ""
    lines = [ln for ln in Path(loc.group(1)).read_text().splitlines()
             if ln.startswith(f"JobId={job_id} ")]
    return lines[-1] if lines else ""


@dataclass
class Job:
    id: str
    output: Path
    submitted: float
    log: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def record(self) -> dict[str, str]:
        return job_record(self.id)

    def state(self) -> str:
        return self.record().get("JobState", "UNKNOWN")

    def explain(self) -> str:
        """What to print when a test about this job fails."""
        return (f"job {self.id}: {self.record()}\n---- {self.output}\n{self.text()}"
                f"\n---- end of output")

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        """Poll `ready` until true; on timeout cancel the job and fail with its output."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                subprocess.run(["scancel", self.id], timeout=15)
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{self.explain()}")
            if self.state() in FINAL_STATES and not ready():
                pytest.fail(f"job ended before {what}\n{self.explain()}")
            time.sleep(0.3)

    def wait(self, timeout: float) -> dict[str, str]:
        """Wait for the job to end for good; returns its final record."""
        deadline = time.monotonic() + timeout
        while (record := self.record()).get("JobState") not in FINAL_STATES:
            if time.monotonic() > deadline:
                subprocess.run(["scancel", self.id], timeout=15)
                pytest.fail(f"job did not end within {timeout:.0f}s\n{self.explain()}")
            time.sleep(0.3)
        return record


@pytest.fixture
def sbatch(tmp_path: Path):
    """Submit a batch script: sbatch(script, *script_args, opts=[...], cwd=..., env=...).

    The output goes to tmp_path/job-<id>.out unless opts set --output. Jobs still queued
    when the test ends are cancelled."""
    jobs: list[Job] = []

    def submit(script: Path | str, *args: str, opts: tuple[str, ...] | list[str] = (),
               cwd: Path | None = None, env: dict[str, str] | None = None) -> Job:
        opts = list(opts)
        if not any(o.startswith(("--output", "-o")) for o in opts):
            opts.append(f"--output={tmp_path}/job-%j.out")
        run = subprocess.run(["sbatch", "--parsable", *opts, str(script), *args],
                             cwd=cwd or tmp_path, env=env, capture_output=True, text=True,
                             timeout=30)
        assert run.returncode == 0, f"sbatch failed: {run.stderr}"
        job_id = run.stdout.strip().split(";")[0]
        out = next(o for o in opts if o.startswith("--output=")).split("=", 1)[1]
        out_path = Path(out.replace("%j", job_id))
        if not out_path.is_absolute():
            out_path = (cwd or tmp_path) / out_path
        job = Job(job_id, out_path, time.monotonic())
        jobs.append(job)
        return job

    yield submit
    for job in jobs:
        if job.state() not in FINAL_STATES:
            subprocess.run(["scancel", job.id], timeout=15)


def hostnames(nodelist: str) -> list[str]:
    """n[1-2] -> ['n1', 'n2'], in Slurm's order."""
    run = subprocess.run(["scontrol", "show", "hostnames", nodelist],
                         capture_output=True, text=True, timeout=15, check=True)
    return run.stdout.split()


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without variables that would steer job.sh, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MPIRNN_", "SLURM_", "SBATCH_", "SRUN_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def slurm():
    """The helpers above for test modules (importing conftest by name is fragile when
    several test folders have one)."""
    from types import SimpleNamespace
    return SimpleNamespace(repo=REPO, python=PYTHON, hostnames=hostnames, clean_env=clean_env,
                           final_states=FINAL_STATES)
