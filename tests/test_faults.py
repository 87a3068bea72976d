"""Faults through the real launcher: each ends the job fast and clearly, and nothing saved is lost.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_faults.py

Every case runs `mpirun -n N python -m mpirnn.train ...` on a small model, injects one
fault (MPIRNN_FAULT, a signal, or kill -9) and measures the time from the fault to the
exit of mpirun: an exception or a bad batch on one rank ends the job within 10 s, a hung
rank within the watchdog's limit (default settings: its 30 s floor; train.comm_timeout_s = 3
when set), a killed rank within 30 s; a first Ctrl-C to mpirun stops cleanly with a checkpoint. Resumed runs
must reproduce an uninterrupted run's losses exactly (float32 on the CPU: bitwise).
The last test scans the library source for pickle-based MPI calls, eval/exec, shell=True
and unsafe torch.load. Set MPIRNN_FAULT_TABLE=FILE to append each case's stderr line and
exit time as JSON Lines (the source of docs/reliability.md). Running and watching a job:
tests/launcher.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from launcher import small_datasets
from launcher import (MPICH_ABORT, Job, assert_intact, assert_losses_match, assert_one_line, checkpoint_steps,
                      record_case, records)
from launcher import _no_job_left_behind  # noqa: F401  (an autouse fixture: kills what a failed test left running)
from support import ROOT

FAULT_EXIT_S = 10     # issue 4: an exception or bad batch on one rank ends every rank within 10 s
HANG_EXIT_S = 10      # train.comm_timeout_s = 3, checked every 0.75 s, plus the abort
DEFAULT_HANG_EXIT_S = 45  # train.comm_timeout_s = -1: the automatic limit's 30 s floor, plus the abort
KILL9_EXIT_S = 30     # issue 4: kill -9 of one rank ends the job within 30 s
SIGNAL_EXIT_S = 30    # a stop signal: checkpoint, then a clean exit
REFERENCE_STEPS = 60  # the uninterrupted run every resumed run is compared with
FOREVER = 100_000     # train.steps of a run that is stopped from outside

pytestmark = pytest.mark.timeout(200)


# -- data and the uninterrupted run -------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_datasets(tmp_path_factory.mktemp("faults-data"))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> list[float]:
    """Losses of an uninterrupted 2-rank float32 run of REFERENCE_STEPS steps on the token data."""
    out = tmp_path_factory.mktemp("faults-reference")
    job = Job(2, {"data.path": data / "tokens", "train.steps": REFERENCE_STEPS,
                  "output.metrics": out / "m.jsonl"})
    assert job.wait() == 0, job.report()
    losses = [r["loss"] for r in records(out / "m.jsonl")]
    assert len(losses) == REFERENCE_STEPS
    return losses


def token_run(data: Path, out: Path, **extra) -> dict:
    return {"data.path": data / "tokens", "output.metrics": out / "m.jsonl", **extra}


# -- 1. an exception on one rank --------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4])
def test_exception_on_one_rank_ends_every_rank(data, tmp_path, n):
    job = Job(n, token_run(data, tmp_path, **{"train.steps": 20}), fault="raise:rank=1:step=3")
    status = job.wait()
    assert status != 0, job.report()
    line = assert_one_line(job, rf"^mpirnn: rank 1 of {n}: InjectedFault: injected fault at step 3\b")
    # The fault happens at the start of step 3 on rank 1, right after step 2's boundary.
    fault_at = min(t for t in (job.seen.get(2), job.line_time(r"^mpirnn: rank 1")) if t is not None)
    seconds = job.ended - fault_at
    record_case(f"exception on rank 1 at step 3 (-n {n})", job, seconds, line)
    assert seconds <= FAULT_EXIT_S, f"exit {seconds:.1f} s after the fault\n{job.report()}"
    assert 3 not in job.seen, "step 3 must never complete"


# -- 2. a bad batch on one rank only -------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_series(data, tmp_path_factory) -> Job:
    out = tmp_path_factory.mktemp("nan-series")
    job = Job(2, {"data.path": data / "series", "train.steps": 6, "output.metrics": out / "m.jsonl"},
              fault="nan:rank=1:step=2")
    job.wait()
    return job


def test_nonfinite_batch_on_one_rank_is_an_agreed_error(nan_series):
    job = nan_series
    assert job.proc.returncode == 1, job.report()
    # Agreed: rank 0 prints one line for all ranks, every rank exits 1 normally (no MPI_Abort).
    line = assert_one_line(job, r"^mpirnn: error: non-finite loss or gradients at step 2 on rank\(s\) [0-9, ]*\b1\b")
    assert not any(MPICH_ABORT.search(x) for x in job.stderr_lines), "an agreed error needs no MPI_Abort"
    seconds = job.ended - min(t for t in (job.seen.get(1), job.line_time("^mpirnn:")) if t is not None)
    record_case("NaN batch on rank 1 at step 2 (series)", job, seconds, line)
    assert seconds <= FAULT_EXIT_S
    assert sorted(job.seen) == [1], "no metrics line for the non-finite step or after it"


def test_nonfinite_error_names_only_the_rank_with_the_bad_batch(nan_series):
    assert_one_line(nan_series, r"non-finite loss or gradients at step 2 on rank\(s\) 1:")


@pytest.fixture(scope="module")
def bad_tokens(data, tmp_path_factory) -> Job:
    out = tmp_path_factory.mktemp("bad-tokens")
    job = Job(2, token_run(data, out, **{"train.steps": 6}), fault="nan:rank=1:step=2")
    job.wait()
    return job


def test_bad_token_batch_on_one_rank_ends_the_job(bad_tokens):
    job = bad_tokens
    assert job.proc.returncode != 0, job.report()
    line = assert_one_line(job, r"^mpirnn: (rank 1 of 2|error):")
    seconds = job.ended - min(t for t in (job.seen.get(1), job.line_time("^mpirnn:")) if t is not None)
    record_case("token ids past the vocabulary on rank 1 at step 2", job, seconds, line)
    assert seconds <= FAULT_EXIT_S
    assert 2 not in job.seen


def test_bad_token_batch_message_says_what_and_where(bad_tokens):
    assert_one_line(bad_tokens, r"step 2.*(vocab|token)|(vocab|token).*step 2")


def test_skip_nonfinite_skips_the_step_on_every_rank(data, tmp_path):
    job = Job(2, {"data.path": data / "series", "train.steps": 6, "train.skip_nonfinite": "true",
                  "train.max_skipped": 0.2, "output.metrics": tmp_path / "m.jsonl"}, fault="nan:rank=1:step=2")
    assert job.wait() == 0, job.report()
    warning = assert_one_line(job, r"^mpirnn: warning: step 2 skipped: non-finite loss or gradients on rank\(s\)")
    record_case("NaN batch on rank 1 at step 2, train.skip_nonfinite=true", job, job.ended - job.started, warning)
    lines = records(tmp_path / "m.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in lines if r.get("skipped")] == [2]
    assert lines[1]["skipped"] is True
    after = [r["loss"] for r in lines[2:]]
    assert all(loss == loss and abs(loss) < 1e6 for loss in after), f"steps after the skip must be finite: {after}"
    summary = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    assert summary["summary"] is True and summary["steps"] == 6


# -- 3. a hung rank ---------------------------------------------------------------------------------

def test_hung_rank_is_reported_and_the_job_aborted(data, tmp_path):
    job = Job(2, token_run(data, tmp_path, **{"train.steps": 20, "train.comm_timeout_s": 3}),
              fault="hang:rank=1:step=2")
    status = job.wait()
    assert status != 0, job.report()
    stuck = [line for line in job.stderr_lines if line.startswith("mpirnn:")]
    assert stuck, job.report()
    assert all(re.match(r"^mpirnn: rank [01] of 2: step 2 has been stuck for more than train.comm_timeout_s = 3 s "
                        r"while \w", line) for line in stuck), job.report()
    assert len(stuck) <= 2 and all(l in stuck or MPICH_ABORT.search(l) for l in job.stderr_lines), job.report()
    assert "Traceback" not in "\n".join(job.stderr_lines)
    seconds = job.ended - job.seen[1]  # rank 1 hangs as soon as step 1 is done
    record_case("rank 1 hangs at step 2, train.comm_timeout_s=3", job, seconds, stuck[0])
    # At least (almost) the timeout: it was the watchdog that ended the job, not something else.
    assert 2.5 <= seconds <= HANG_EXIT_S, f"exit {seconds:.1f} s after the hang\n{job.report()}"


def test_hung_stage_ends_the_job_with_default_settings(data, tmp_path):
    # No train.comm_timeout_s: the automatic watchdog (after its warm-up steps) must end a job whose
    # second pipeline stage hangs, naming the step and what the stuck rank waits for.
    job = Job(2, token_run(data, tmp_path, **{"train.steps": FOREVER, "model.layers": 2, "parallel.pp": 2}),
              fault="hang:rank=1:step=8")
    status = job.wait()
    assert status != 0, job.report()
    stuck = [line for line in job.stderr_lines if line.startswith("mpirnn:")]
    assert stuck and all(re.match(r"^mpirnn: rank [01] of 2: step 8 has been stuck for more than the automatic "
                                  r"limit of \d+ s \(train.comm_timeout_s = -1", line) for line in stuck), job.report()
    assert all(l in stuck or MPICH_ABORT.search(l) for l in job.stderr_lines), job.report()
    assert any("pp=2" in line and "stage" in line for line in stuck), job.report()
    seconds = job.ended - job.seen[7]
    record_case("stage 1 of pp=2 hangs at step 8, default settings", job, seconds, stuck[0])
    assert 25 <= seconds <= DEFAULT_HANG_EXIT_S, f"exit {seconds:.1f} s after the hang\n{job.report()}"


def test_exception_in_a_pipeline_stage_ends_every_rank(data, tmp_path):
    job = Job(2, token_run(data, tmp_path, **{"train.steps": 20, "model.layers": 2, "parallel.pp": 2}),
              fault="raise:rank=1:step=3")
    assert job.wait() != 0, job.report()
    line = assert_one_line(job, r"^mpirnn: rank 1 of 2: InjectedFault: injected fault at step 3\b")
    fault_at = min(t for t in (job.seen.get(2), job.line_time(r"^mpirnn: rank 1")) if t is not None)
    record_case("exception on stage 1 of pp=2 at step 3", job, job.ended - fault_at, line)
    assert job.ended - fault_at <= FAULT_EXIT_S, job.report()


# -- 4. kill -9 of one rank ---------------------------------------------------------------------------

def test_kill_one_rank_then_resume_loses_at_most_every(data, tmp_path, uninterrupted):
    every = 2
    ckpt = tmp_path / "ckpt"
    job = Job(2, token_run(data, tmp_path, **{"train.steps": FOREVER, "checkpoint.dir": ckpt,
                                              "checkpoint.every": every}))
    job.wait_for_step(5)
    victim = job.wait_for_ranks()[1]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    status = job.wait()
    seconds = job.ended - killed_at
    record_case("kill -9 of rank 1 mid-run", job, seconds,
                next((line for _, line in job.out if "EXIT CODE" in line or "KILLED" in line), ""))
    assert status != 0, job.report()
    assert seconds <= KILL9_EXIT_S, f"mpirun ended {seconds:.1f} s after the kill"
    last_logged = max(job.seen)
    assert last_logged + 4 <= REFERENCE_STEPS, f"the killed run went on too long ({last_logged} steps)"

    target = last_logged + 3
    resumed = Job(2, token_run(data, tmp_path, **{"train.steps": target, "checkpoint.dir": ckpt,
                                                  "checkpoint.every": every, "checkpoint.resume": "true"}))
    assert resumed.wait() == 0, resumed.report()
    first = min(resumed.seen)
    assert 0 <= last_logged - (first - 1) <= every, \
        f"resumed from step {first - 1} but step {last_logged} had been logged: lost more than checkpoint.every"
    assert sorted(resumed.seen) == list(range(first, target + 1))
    # The lines of steps redone after the checkpoint were replaced, not duplicated.
    assert [r["step"] for r in records(tmp_path / "m.jsonl")] == list(range(1, target + 1))
    assert_losses_match(tmp_path / "m.jsonl", uninterrupted)  # the killed run's lines too, then the resumed ones


# -- 5. SIGUSR1 and SIGTERM to every rank ---------------------------------------------------------------

def stop_with(job: Job, sig: signal.Signals, after_step: int) -> tuple[int, str, float]:
    """Signal every rank (as Slurm does) once after_step is logged; (stop step, message line, seconds to exit)."""
    job.wait_for_step(after_step)
    pids = job.wait_for_ranks()
    for pid in pids.values():
        os.kill(pid, sig)
    sent = time.monotonic()
    status = job.wait()
    assert status == 128 + sig, f"exit {status}, expected 128 + {sig.name} = {128 + sig}\n{job.report()}"
    line = assert_one_line(job, rf"^mpirnn: stopped by signal {sig.name} after step (\d+); checkpoint saved in ")
    step = int(re.search(r"after step (\d+)", line).group(1))
    assert max(job.seen) == step, "the stop step is the last step logged"
    return step, line, job.ended - sent


def test_stop_signals_write_one_checkpoint_and_resume_exactly(data, tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    run = token_run(data, tmp_path, **{"train.steps": FOREVER, "checkpoint.dir": ckpt, "checkpoint.every": 0})

    first = Job(2, run)
    step1, line, seconds = stop_with(first, signal.SIGUSR1, after_step=3)
    record_case("SIGUSR1 to every rank", first, seconds, line)
    assert seconds <= SIGNAL_EXIT_S
    assert checkpoint_steps(ckpt) == [step1], "exactly one checkpoint, at the step the message names"
    assert_intact(ckpt, step1)

    second = Job(2, {**run, "checkpoint.resume": "true"})
    step2, line, seconds = stop_with(second, signal.SIGTERM, after_step=step1 + 3)
    record_case("SIGTERM to every rank (after a resume)", second, seconds, line)
    assert seconds <= SIGNAL_EXIT_S
    assert min(second.seen) == step1 + 1, "the resumed run continues right after the signal's checkpoint"
    assert checkpoint_steps(ckpt) == [step1, step2]
    assert_intact(ckpt, step2)
    assert step2 + 3 <= REFERENCE_STEPS, f"the stopped runs went on too long ({step2} steps)"

    third = Job(2, {**run, "train.steps": step2 + 3, "checkpoint.resume": "true"})
    assert third.wait() == 0, third.report()
    assert not third.stderr_lines, third.report()
    assert sorted(third.seen) == [step2 + 1, step2 + 2, step2 + 3]
    assert [r["step"] for r in records(tmp_path / "m.jsonl")] == list(range(1, step2 + 4)), "no step lost or repeated"
    assert_losses_match(tmp_path / "m.jsonl", uninterrupted)


def test_ctrl_c_stops_cleanly_with_a_checkpoint_and_resumes_exactly(data, tmp_path, uninterrupted):
    # SIGINT to mpirun (what Ctrl-C in a terminal does): hydra passes it to every rank once; the
    # ranks agree to stop at the next step boundary, save, print the resume command once, exit 130.
    ckpt = tmp_path / "ckpt"
    run = token_run(data, tmp_path, **{"train.steps": FOREVER, "checkpoint.dir": ckpt})
    job = Job(2, run)
    job.wait_for_step(3)
    job.wait_for_ranks()
    job.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    status = job.wait()
    assert status == 130, f"exit {status}, expected 130\n{job.report()}"
    ours = [line for line in job.stderr_lines if line.startswith("mpirnn:")]
    assert len(ours) == 1, job.report()
    assert re.match(r"^mpirnn: stopped by signal SIGINT after step (\d+); checkpoint saved in .*; resume with: "
                    r"mpirun -n 2 python -m mpirnn\.train .*--set checkpoint\.resume=true$", ours[0]), job.report()
    step = int(re.search(r"after step (\d+)", ours[0]).group(1))
    record_case("Ctrl-C (SIGINT to mpirun)", job, job.ended - sent, ours[0])
    assert checkpoint_steps(ckpt) == [step]
    assert_intact(ckpt, step)
    resumed = Job(2, {**run, "train.steps": step + 3, "checkpoint.resume": "true"})
    assert resumed.wait() == 0, resumed.report()
    assert sorted(resumed.seen) == [step + 1, step + 2, step + 3]
    assert_losses_match(tmp_path / "m.jsonl", uninterrupted)


# -- 6. kill -9 during a checkpoint write ------------------------------------------------------------------

def test_kill_during_checkpoint_write_keeps_the_previous_one(data, tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    run = token_run(data, tmp_path, **{"checkpoint.dir": ckpt, "checkpoint.every": 3})
    # The first checkpoint is written normally; only the resumed run writes slowly.
    first = Job(2, {**run, "train.steps": 3})
    assert first.wait() == 0, first.report()
    assert checkpoint_steps(ckpt) == [3]
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}

    slow = Job(2, {**run, "train.steps": FOREVER, "checkpoint.resume": "true"}, fault="slow-checkpoint:seconds=20")
    slow.wait_until(lambda: any(ckpt.glob(".ckpt-00000006.pt.tmp-*")), "temporary file of checkpoint 6", timeout=60)
    slow.kill()  # half of checkpoint 6 is on disk now
    slow.wait()
    partial = list(ckpt.glob(".ckpt-00000006.pt.tmp-*"))
    assert partial, "the kill should leave the half-written temporary file behind"
    assert checkpoint_steps(ckpt) == [3] and not (ckpt / "ckpt-00000006.pt").exists()
    assert {name: (ckpt / name).read_bytes() for name in before} == before, "checkpoint 3 must be untouched"
    assert_intact(ckpt, 3)

    resumed = Job(2, {**run, "train.steps": 8, "checkpoint.resume": "true"})
    assert resumed.wait() == 0, resumed.report()
    assert not resumed.stderr_lines, f"no warning: no broken checkpoint is listed\n{resumed.report()}"
    assert min(resumed.seen) == 4, "resumed from checkpoint 3"
    assert checkpoint_steps(ckpt) == [3, 6, 8]
    for step in (6, 8):
        assert_intact(ckpt, step)
    assert_losses_match(tmp_path / "m.jsonl", uninterrupted)
    record_case("kill -9 of the job while writing checkpoint 6", resumed, resumed.ended - resumed.started,
                "(resume: no message; continues from checkpoint 3)")


# -- 7. security: what the library source may not do ---------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
# mpi4py's lower-case (pickle-based) communication methods; the library uses the buffer (Upper case) ones.
PICKLING_METHODS = {"send", "recv", "isend", "irecv", "issend", "ssend", "bsend", "ibsend", "sendrecv", "mrecv",
                    "bcast", "gather", "scatter", "allgather", "alltoall", "reduce", "allreduce", "scan", "exscan",
                    "ibcast", "igather", "iscatter", "iallgather", "ialltoall", "ireduce", "iallreduce",
                    "mprobe", "improbe", "neighbor_allgather", "neighbor_alltoall"}
# A receiver that reads like a communicator: comm, comms.world, self.sp, comms.axis["dp"], MPI.COMM_WORLD, ...
COMMUNICATOR = re.compile(r"(comm|world|COMM_|replicas|axis\[|(^|\.)(sp|dp|pp|tp|node)$)", re.IGNORECASE)


def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """Each unsafe construct in `source` as 'file:line: what'."""
    problems = []
    tree = ast.parse(source, filename)

    def say(node, what):
        problems.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    say(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            say(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr == "pickle" and ast.unparse(node.value) == "MPI":
            say(node, "MPI.pickle")
        elif isinstance(node, ast.Call):
            func, keywords = node.func, {k.arg: k.value for k in node.keywords}
            name = ast.unparse(func)
            if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
                say(node, f"{func.id}()")
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                say(node, f"{name}() runs a shell")
            shell = keywords.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                say(node, f"{name}(shell=...)")
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    say(node, "torch.load without weights_only=True")
            if name in ("np.load", "numpy.load"):
                allow = keywords.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    say(node, "np.load(allow_pickle=...)")
            if name in ("yaml.load", "yaml.unsafe_load"):
                say(node, f"{name}() can build arbitrary objects")
            if isinstance(func, ast.Attribute) and func.attr in PICKLING_METHODS \
                    and COMMUNICATOR.search(ast.unparse(func.value)):
                say(node, f"{name}() pickles what it sends and receives; use the buffer method "
                          f"{func.attr[:1].upper() + func.attr[1:]}")
    return problems


def test_the_scanner_finds_each_unsafe_construct():
    bad = ("import pickle\nfrom dill import loads\nx = comm.bcast(obj, root=0)\ny = self.comms.world.allgather(v)\n"
           "z = comms.axis['sp'].recv(source=0)\nw = self.sp.send(x, dest=1)\nMPI.pickle.__init__(None)\n"
           "eval(text)\nexec(code)\nsubprocess.run(cmd, shell=True)\nos.system(cmd)\n"
           "torch.load(path)\ntorch.load(path, weights_only=False)\nnp.load(f, allow_pickle=True)\n")
    assert len(unsafe_calls(bad)) == 14, unsafe_calls(bad)
    fine = ("comm.Bcast(buf, root=0)\nworld.Allgather(a, b)\nplacement.gather(comms, rec)\n"
            "algebra.reduce(a, dim=0)\nlogits.gather(1, idx)\nfunctools.reduce(f, xs)\n"
            "subprocess.run(cmd, shell=False)\ntorch.load(p, map_location='cpu', weights_only=True)\n"
            "np.load(f, mmap_mode='r', allow_pickle=False)\nre.compile('x')\nmodel.eval()\n")
    assert unsafe_calls(fine) == []


def test_library_source_is_free_of_pickle_eval_shell_and_unsafe_loads():
    files = sorted((ROOT / "mpirnn").rglob("*.py"))
    assert len(files) > 10
    problems = [p for path in files for p in unsafe_calls(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == []
    config = (ROOT / "mpirnn" / "config.py").read_text()
    assert "tomllib" in config, "configs are parsed with the standard library's tomllib"
