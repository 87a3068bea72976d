"""What a new user sees from the launcher's first mistakes: said once, with the fix, through the real mpirun.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_cli_hints.py

A usage error under `mpirun -n 2` is printed by rank 0 only and every rank exits 2; a grid that
wants 4 ranks in a job of one process says `mpirun -n 4`; `--version` prints one line.
None of these reach torch, so each run takes about a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mpirnn import __version__

pytestmark = pytest.mark.timeout(120)

MPIRUN = Path(sys.executable).parent / "mpirun"
if not MPIRUN.exists():
    MPIRUN = Path(shutil.which("mpirun") or MPIRUN)
KILL_AFTER_S = 60


def launch(command: list, cwd: Path) -> subprocess.CompletedProcess:
    """Run `command`, killed whole (mpirun and every rank) after KILL_AFTER_S."""
    env = {k: v for k, v in os.environ.items() if k != "MPIRNN_TRACEBACK"}
    proc = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{command} still running after {KILL_AFTER_S} s (a rank hangs):\n{out}\n{err}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def trainer(*args, ranks: int | None = None) -> list:
    command = [sys.executable, "-m", "mpirnn.train", *args]
    if ranks is None:
        return command
    if not MPIRUN.exists():
        pytest.skip("no mpirun next to the Python interpreter or on PATH")
    return [MPIRUN, "-n", ranks, *command]


@pytest.mark.parametrize("args, complaint", [
    (["--set", "train.lr", ".001"], "unrecognized arguments: .001"),   # a space instead of =
    (["stray"], "unrecognized arguments: stray"),
    (["--config"], "argument --config: expected one argument"),
], ids=["space-not-equals", "stray-positional", "missing-value"])
def test_usage_error_is_printed_once_and_every_rank_exits_2(tmp_path, args, complaint):
    run = launch(trainer(*args, ranks=2), tmp_path)
    shown = f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 2, shown
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert sum(line.startswith("usage:") for line in lines) == 1, shown
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and complaint in errors[0], shown
    assert "Traceback" not in run.stderr and not run.stdout.strip(), shown


def test_one_process_for_a_grid_of_four_says_mpirun_n_4(tmp_path):
    run = launch(trainer("--set", "parallel.dp=4"), tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    shown = f"exit {run.returncode}\nstderr:\n{run.stderr}"
    assert run.returncode == 1, shown
    assert len(lines) == 1 and lines[0].startswith("mpirnn: error:"), shown
    assert "4 ranks but the job has 1" in lines[0] and "`mpirun -n 4 python -m mpirnn.train" in lines[0], shown


def test_a_grid_that_fits_the_job_has_no_mpirun_hint(tmp_path):
    run = launch(trainer("--set", "parallel.dp=3", ranks=2), tmp_path)
    assert run.returncode == 1, run.stderr
    assert "3 ranks but the job has 2" in run.stderr and "mpirun -n" not in run.stderr


@pytest.mark.parametrize("ranks", [None, 2], ids=["python", "mpirun-n2"])
def test_version_is_printed_once(tmp_path, ranks):
    run = launch(trainer("--version", ranks=ranks), tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, f"mpirnn {__version__}\n", "")


def test_console_script_has_version(tmp_path):
    script = Path(sys.executable).parent / "mpirnn-train"
    if not script.exists():
        pytest.skip("mpirnn-train not installed (pip install -e .)")
    run = launch([script, "--version"], tmp_path)
    assert (run.returncode, run.stdout) == (0, f"mpirnn {__version__}\n"), run.stderr
