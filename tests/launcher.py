"""Running `mpirun -n N python -m mpirnn.train ...` in tests and watching it: output lines and
metrics steps timestamped as they appear, the rank processes found, the whole job killed.

Used by the launcher-level tests (tests/test_faults.py, tests/test_after_training.py). Hydra
puts its proxy and every rank in a session of their own, so the ranks are found by walking
mpirun's descendants in /proc (their rank from PMI_RANK), and "kill -9 of the whole job" kills
mpirun, the proxy and every rank by pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import ROOT, make_series_dataset, make_token_dataset

MPIRUN = Path(sys.executable).parent / "mpirun"
if not MPIRUN.exists():
    MPIRUN = Path(shutil.which("mpirun") or MPIRUN)

KILL_AFTER_S = 90     # a job still running after this is a hang: fail (and kill it)
# MPI_Abort makes MPICH print its own notice, e.g.
#   Abort(1) on node 1 (rank 1 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 1) - process 1
MPICH_ABORT = re.compile(r"application called MPI_Abort\(")
# A small model with the extras off, for tests about something else (faults, resumes); the tests
# of what users meet (tests/test_after_training.py) pass base={} to keep every default.
SMALL = {"model.hidden": 16, "model.layers": 1, "model.embed": 8, "model.cell": "lstm", "model.dtype": "float32",
         "data.seq_len": 16, "data.batch_size": 8, "train.device": "cpu", "output.progress": "false",
         "output.sample_bytes": 0}


# -- running and watching a job ------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, found, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Job:
    """One `mpirun -n N python -m mpirnn.train` run; stderr lines and metrics steps timestamped as they appear."""

    live: set["Job"] = set()

    def __init__(self, n: int, settings: dict, fault: str | None = None, base: dict = SMALL, cwd: Path = ROOT,
                 command: list[str] | None = None):
        """`settings` over `base` as --set arguments; `command`: another mpirnn command line than the trainer's."""
        if not MPIRUN.exists():
            pytest.skip("no mpirun next to the Python interpreter or on PATH")
        values = {**base, **settings}
        self.n = n
        self.metrics = Path(cwd, values.get("output.metrics") or "no-metrics-file")
        # Lines already there belong to an earlier run (a resume keeps those up to its checkpoint and
        # rewrites the rest): a step counts as this job's when its line was not among them.
        self.earlier_lines = set(self.metrics.read_text().splitlines()) if self.metrics.exists() else set()
        args = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
        env = {k: v for k, v in os.environ.items() if k not in ("MPIRNN_FAULT", "MPIRNN_TRACEBACK")}
        env["OMP_NUM_THREADS"] = "1"
        if fault:
            env["MPIRNN_FAULT"] = fault
        self.command = [str(MPIRUN), "-n", str(n), sys.executable, *(command or ["-m", "mpirnn.train", *args])]
        self.fault = fault
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self.seen: dict[int, float] = {}  # step -> when its metrics line first appeared
        self.started = time.monotonic()
        self.ended: float | None = None
        self.proc = subprocess.Popen(self.command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        Job.live.add(self)
        self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
                        threading.Thread(target=self._watch_metrics, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _read(self, stream, into) -> None:
        for line in stream:
            into.append((time.monotonic(), line.rstrip("\n")))

    def _watch_metrics(self) -> None:
        while True:
            running = self.proc.poll() is None
            self._scan_metrics()
            if not running:
                return
            time.sleep(0.02)

    def _scan_metrics(self) -> None:
        if not self.metrics.exists():
            return
        now = time.monotonic()
        for line in self.metrics.read_text().splitlines():
            if line in self.earlier_lines:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line being written
            if not record.get("summary"):
                self.seen.setdefault(record["step"], now)

    # -- waiting and ending -----------------------------------------------------------------

    def wait_until(self, condition, what: str, timeout: float = KILL_AFTER_S) -> float:
        """Poll until condition() holds while the job runs; the time it first held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return time.monotonic()
            if self.proc.poll() is not None:
                self.wait()
                pytest.fail(f"the job ended (exit {self.proc.returncode}) before {what}\n{self.report()}")
            time.sleep(0.01)
        self.kill()
        pytest.fail(f"no {what} after {timeout} s\n{self.report()}")

    def wait_for_step(self, step: int) -> float:
        return self.wait_until(lambda: step in self.seen, f"metrics line for step {step}")

    def wait(self, timeout: float = KILL_AFTER_S) -> int:
        try:
            self.proc.wait(timeout=max(timeout - (time.monotonic() - self.started), 1))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"mpirun -n {self.n} still running after {timeout} s (a rank hangs)\n{self.report()}")
        self.ended = self.ended or time.monotonic()
        for thread in self.threads:
            thread.join(timeout=10)
        self._scan_metrics()
        Job.live.discard(self)
        return self.proc.returncode

    def rank_pids(self) -> dict[int, int]:
        """rank -> pid of every rank's Python process (children of hydra's proxy)."""
        ranks = {}
        for pid in _descendants(self.proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mpirnn.train" not in argv or b"mpirun" in argv[0] or b"hydra" in argv[0]:
                continue
            rank = [e.split(b"=", 1)[1] for e in environ if e.startswith((b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK="))]
            if rank:
                ranks[int(rank[0])] = pid
        return ranks

    def wait_for_ranks(self) -> dict[int, int]:
        self.wait_until(lambda: len(self.rank_pids()) == self.n, f"{self.n} rank processes")
        return self.rank_pids()

    def kill(self) -> None:
        """kill -9 of the whole job: mpirun, hydra's proxy and every rank."""
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self.ended = self.ended or time.monotonic()

    # -- what came out ----------------------------------------------------------------------

    @property
    def stderr_lines(self) -> list[str]:
        return [line for _, line in self.err if line.strip()]

    @property
    def stdout(self) -> str:
        return "\n".join(line for _, line in self.out)

    def line_time(self, pattern: str) -> float | None:
        return next((t for t, line in self.err if re.search(pattern, line)), None)

    def report(self) -> str:
        return (f"command: MPIRNN_FAULT={self.fault or ''} {' '.join(self.command)}\n"
                f"stdout:\n{self.stdout}\nstderr:\n" + "\n".join(self.stderr_lines))


@pytest.fixture(autouse=True)
def _no_job_left_behind():
    yield
    for job in list(Job.live):
        if job.proc.poll() is None:
            job.kill()
        Job.live.discard(job)


def record_case(case: str, job: Job, seconds: float, line: str) -> None:
    """Append one row of the docs' fault table (MPIRNN_FAULT_TABLE=FILE)."""
    path = os.environ.get("MPIRNN_FAULT_TABLE")
    if path:
        with open(path, "a") as handle:
            said = job.line_time("^mpirnn:")
            handle.write(json.dumps({"case": case, "n": job.n, "exit": job.proc.returncode,
                                     "seconds": round(seconds, 2), "total_s": round(job.ended - job.started, 2),
                                     "after_line_s": None if said is None else round(job.ended - said, 2),
                                     "line": line, "fault": job.fault}) + "\n")


def assert_one_line(job: Job, pattern: str) -> str:
    """One `mpirnn:` line matching pattern, besides it only MPICH's abort notices, and no traceback."""
    lines = job.stderr_lines
    ours = [line for line in lines if line.startswith("mpirnn:")]
    assert len(ours) == 1, f"expected one mpirnn: line\n{job.report()}"
    assert re.search(pattern, ours[0]), f"{ours[0]!r} does not match {pattern!r}\n{job.report()}"
    others = [line for line in lines if line is not ours[0] and not MPICH_ABORT.search(line)]
    assert not others, f"stderr lines besides the mpirnn: line and MPICH's abort notice: {others}\n{job.report()}"
    assert "Traceback" not in job.stdout + "\n".join(lines), job.report()
    return ours[0]


def records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if not r.get("summary")]


def checkpoint_steps(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := re.match(r"^ckpt-(\d{8})\.json$", p.name)))


def assert_intact(directory: Path, step: int) -> None:
    """Checkpoint `step` is complete: its JSON names its weights file and the SHA-256 matches."""
    meta = json.loads((directory / f"ckpt-{step:08d}.json").read_text())
    payload = (directory / meta["file"]).read_bytes()
    assert meta["step"] == step
    assert hashlib.sha256(payload).hexdigest() == meta["sha256"], f"checkpoint {step} in {directory} is corrupt"


def assert_losses_match(path: Path, expected: list[float], first: int = 1) -> None:
    """Every metrics line of steps >= first has exactly the uninterrupted run's loss for that step."""
    got = [(r["step"], r["loss"]) for r in records(path) if r["step"] >= first]
    assert got, f"no metrics lines from step {first} in {path}"
    assert max(step for step, _ in got) <= len(expected), "the reference run is too short for this comparison"
    assert [loss for _, loss in got] == [expected[step - 1] for step, _ in got], \
        f"resumed losses differ from the uninterrupted run: {got}"


def small_datasets(root: Path) -> Path:
    """`root/tokens` (bytes) and `root/series` (3 features): the datasets the launcher tests train on."""
    make_token_dataset(root / "tokens")
    make_series_dataset(root / "series")
    return root
