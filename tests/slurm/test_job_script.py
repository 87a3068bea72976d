"""slurm/job.sh on the local Slurm cluster, and without one where a stand-in srun is enough.

    slurm/local-cluster.sh start && .venv/bin/python -m pytest -q tests/slurm/test_job_script.py

The first tests run job.sh against a stand-in trainer (a throwaway `mpirnn` package in a
temporary MPIRNN_HOME with the trainer's CLI, signal and checkpoint behaviour), so they check
the script itself: argument passing, threads per rank, finding the project, USR1 forwarding
and requeue, failure; the srun test among them needs no cluster (bash and a stand-in srun:
`.venv/bin/python -m pytest -q tests/slurm -m "not slurm"`). The last ones run the real
`python -m mpirnn.train`.
"""

import json
import os
import shlex
import subprocess
import textwrap
import time

import pytest

# Every test needs the cluster except those at the end of the stand-in section, which run
# job.sh with bash and a stand-in srun (they run in the unit tests: -m "not slurm").
cluster = pytest.mark.slurm

# Same CLI and exit protocol as mpirnn.train (--config, --set k=v); loss 1/step. On USR1 each
# rank sets a flag, the ranks agree at the step boundary (allreduce MAX), rank 0 writes the
# checkpoint and all exit 128+USR1, or, as under job.sh (MPIRNN_STOP_FILE set), each node's
# first rank notes the stop in that file and all exit 0; a one-rank failure prints one line and
# calls MPI_Abort.
FAKE_TRAIN = '''
import json, os, signal, sys, time
from pathlib import Path
from mpi4py import MPI

stop = False
def on_usr1(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGUSR1, on_usr1)

cfg = {"train.steps": "5", "fake.step_s": "0", "fake.fail_rank": "-1", "checkpoint.resume": "false"}
argv = iter(sys.argv[1:])
for arg in argv:
    if arg == "--set":
        key, _, value = next(argv).partition("=")
        cfg[key] = value
    elif arg == "--config":
        cfg["config"] = next(argv)
    else:
        sys.exit(f"fake train: unknown argument {arg!r}")

world = MPI.COMM_WORLD
rank = world.Get_rank()
local = world.Split_type(MPI.COMM_TYPE_SHARED)
out = Path(cfg["fake.out"])
with open(out / f"rank{rank}.jsonl", "a") as f:
    f.write(json.dumps({
        "argv": sys.argv[1:], "size": world.Get_size(), "node": os.environ.get("SLURMD_NODENAME"),
        "local_rank": local.Get_rank(), "restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
        **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")},
    }) + "\\n")

ckpt = Path(cfg["checkpoint.dir"]) / "step.json" if "checkpoint.dir" in cfg else None
start = 0
if cfg["checkpoint.resume"] == "true" and ckpt and ckpt.exists():
    start = json.loads(ckpt.read_text())["step"]
for step in range(start + 1, int(cfg["train.steps"]) + 1):
    time.sleep(float(cfg["fake.step_s"]))
    if rank == int(cfg["fake.fail_rank"]) and step == 2:
        print(f"rank {rank}: fake failure at step 2", file=sys.stderr, flush=True)
        world.Abort(1)
    if rank == 0 and "output.metrics" in cfg:
        with open(cfg["output.metrics"], "a") as f:
            f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\\n")
    if world.allreduce(stop, op=MPI.MAX):
        if rank == 0:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_text(json.dumps({"step": step}))
            print(f"fake train: checkpoint at step {step}, stopping", flush=True)
        world.Barrier()
        marker = os.environ.get("MPIRNN_STOP_FILE")
        if marker:
            if local.Get_rank() == 0:
                Path(marker).write_text(f"SIGUSR1 {step}\\n")
            sys.exit(0)
        sys.exit(128 + signal.SIGUSR1)
'''


@pytest.fixture
def fake_home(tmp_path):
    """An MPIRNN_HOME whose `mpirnn.train` is the stand-in above; runs write to home/out."""
    home = tmp_path / "home"
    (home / "mpirnn").mkdir(parents=True)
    (home / "mpirnn" / "__init__.py").write_text("")
    (home / "mpirnn" / "train.py").write_text(textwrap.dedent(FAKE_TRAIN))
    (home / "out").mkdir()
    return home


def runs(out_dir):
    """Every rank's start records, rank by rank: {rank: [record per (re)start]}."""
    return {int(p.stem[4:]): [json.loads(ln) for ln in p.read_text().splitlines()]
            for p in sorted(out_dir.glob("rank*.jsonl"))}


def metrics(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


@cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("opts, ranks, threads", [
    ([], 4, "1"),                                                  # the #SBATCH defaults: 2 x 2
    (["--ntasks-per-node=1", "--cpus-per-task=2"], 2, "2"),        # counts given to sbatch only
])
def test_job_script_passes_arguments_and_threads(tmp_path, sbatch, slurm, fake_home,
                                                 opts, ranks, threads):
    env = slurm.clean_env(MPIRNN_HOME=str(fake_home), MPIRNN_PYTHON=str(slurm.python))
    args = ["--set", "train.steps=2", "--set", "output.note=two words",
            "--set", f"fake.out={fake_home / 'out'}"]
    job = sbatch(slurm.repo / "slurm" / "job.sh", *args, opts=opts, env=env)
    record = job.wait(timeout=90)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), job.explain()

    started = runs(fake_home / "out")
    assert sorted(started) == list(range(ranks)), job.explain()
    nodes = slurm.hostnames(record["NodeList"])
    per_node = ranks // 2
    for rank, (run,) in started.items():
        assert run["argv"] == args, job.explain()           # spaces survive, nothing added
        assert run["size"] == ranks
        assert run["node"] == nodes[rank // per_node]
        assert run["local_rank"] == rank % per_node
        assert (run["OMP_NUM_THREADS"], run["SLURM_CPUS_PER_TASK"]) == (threads, threads)


@cluster
@pytest.mark.timeout(120)
def test_job_script_finds_project_from_another_directory(tmp_path, sbatch, slurm):
    """Submitted by path from elsewhere, without MPIRNN_HOME: job.sh finds the repository
    (sbatch runs a copy of the script, so it cannot look next to itself). /bin/echo stands in
    for python, so this needs no trainer."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = slurm.clean_env(MPIRNN_PYTHON="/bin/echo")
    job = sbatch(slurm.repo / "slurm" / "job.sh", "--set", "x=1", cwd=elsewhere, env=env,
                 opts=["--output=job-%j.out"])
    record = job.wait(timeout=60)
    assert job.output.parent == elsewhere
    assert record["JobState"] == "COMPLETED", job.explain()
    assert f"project {slurm.repo};" in job.text(), job.explain()
    assert job.text().count("-m mpirnn.train --set x=1") == 4, job.explain()


@cluster
@pytest.mark.timeout(180)
def test_job_script_forwards_usr1_and_requeues(tmp_path, sbatch, slurm, fake_home):
    """USR1 to the batch shell (what --signal=B:USR1@60 does before the time limit) reaches
    every rank; the trainer (a stand-in here) checkpoints and notes the stop in $MPIRNN_STOP_FILE;
    job.sh requeues; the second run resumes
    with checkpoint.resume=true and finishes: every step logged exactly once."""
    env = slurm.clean_env(MPIRNN_HOME=str(fake_home), MPIRNN_PYTHON=str(slurm.python))
    steps = 30
    metrics_path = tmp_path / "metrics.jsonl"
    job = sbatch(slurm.repo / "slurm" / "job.sh",
                 "--set", f"train.steps={steps}", "--set", "fake.step_s=0.2",
                 "--set", f"checkpoint.dir={tmp_path / 'ckpt'}",
                 "--set", f"output.metrics={metrics_path}",
                 "--set", f"fake.out={fake_home / 'out'}", env=env)
    job.wait_until("step 5 of the first run",
                   lambda: len(metrics(metrics_path)) >= 5, timeout=60)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job.id], check=True, timeout=15)
    record = job.wait(timeout=150)

    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), job.explain()
    assert record["Restarts"] == "1", job.explain()
    text = job.text()
    assert "got SIGUSR1" in text and "requeueing job" in text, job.explain()
    logged = [m["step"] for m in metrics(metrics_path)]
    assert logged == list(range(1, steps + 1)), job.explain()
    for rank, started in runs(fake_home / "out").items():
        assert [r["restart"] for r in started] == ["0", "1"], job.explain()
        assert "checkpoint.resume=true" in started[1]["argv"]
        assert "checkpoint.resume=true" not in started[0]["argv"]


@cluster
@pytest.mark.timeout(120)
def test_job_script_failure_ends_job_quickly(tmp_path, sbatch, slurm, fake_home):
    """A rank that fails (MPI_Abort on one rank, the others in a collective) ends the job
    FAILED within seconds with the cause in the output, not at the time limit."""
    env = slurm.clean_env(MPIRNN_HOME=str(fake_home), MPIRNN_PYTHON=str(slurm.python))
    job = sbatch(slurm.repo / "slurm" / "job.sh", "--set", "train.steps=50",
                 "--set", "fake.fail_rank=1", "--set", f"fake.out={fake_home / 'out'}", env=env)
    record = job.wait(timeout=60)
    assert record["JobState"] == "FAILED", job.explain()
    assert "rank 1: fake failure at step 2" in job.text(), job.explain()
    assert time.monotonic() - job.submitted < 30, job.explain()


@cluster
@pytest.mark.timeout(180)
def test_time_limit_warning_checkpoints_and_requeues(tmp_path, sbatch, slurm, fake_home):
    """The real trigger: Slurm itself sends USR1 before the time limit (--signal=B:USR1@80 on a
    2-minute job: 40 s nominal, Slurm checks every ~30 s so 10-40 s here). The run stops at a
    checkpoint, is requeued and resumes from it; then the test cancels it."""
    env = slurm.clean_env(MPIRNN_HOME=str(fake_home), MPIRNN_PYTHON=str(slurm.python))
    metrics_path = tmp_path / "metrics.jsonl"
    out = fake_home / "out"
    job = sbatch(slurm.repo / "slurm" / "job.sh",
                 "--set", "train.steps=1000", "--set", "fake.step_s=0.1",
                 "--set", f"checkpoint.dir={tmp_path / 'ckpt'}",
                 "--set", f"output.metrics={metrics_path}", "--set", f"fake.out={out}",
                 opts=["--time=00:02:00", "--signal=B:USR1@80"], env=env)
    job.wait_until("the requeued run to log a step",
                   lambda: len(runs(out).get(0, [])) == 2 and len(metrics(metrics_path)) > (
                       json.loads((tmp_path / "ckpt" / "step.json").read_text())["step"]),
                   timeout=120)
    subprocess.run(["scancel", job.id], check=True, timeout=15)
    record = job.wait(timeout=30)
    assert record["Restarts"] == "1", job.explain()
    assert "got SIGUSR1" in job.text() and "requeueing job" in job.text(), job.explain()
    logged = [m["step"] for m in metrics(metrics_path)]
    assert logged == list(range(1, len(logged) + 1)), job.explain()   # resumed, no step twice


@pytest.mark.timeout(60)
@pytest.mark.parametrize("setting, plugin", [(None, "pmi2"), ("pmix", "pmix")], ids=["default", "pmix"])
def test_srun_pmi_plugin_is_the_variable(tmp_path, slurm, fake_home, setting, plugin):
    """No cluster: bash runs job.sh with a stand-in srun on PATH that records its arguments.
    srun gets --mpi=$MPIRNN_SRUN_MPI (pmi2 when unset), the trainer's arguments unchanged."""
    bin_dir, record = tmp_path / "bin", tmp_path / "srun-args"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
    (bin_dir / "srun").chmod(0o755)
    env = slurm.clean_env(MPIRNN_HOME=str(fake_home), MPIRNN_PYTHON="/bin/echo",
                          PATH=f"{bin_dir}:{os.environ['PATH']}",
                          **({"MPIRNN_SRUN_MPI": setting} if setting else {}))
    run = subprocess.run(["bash", str(slurm.repo / "slurm" / "job.sh"), "--set", "train.steps=2"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert record.read_text().splitlines() == [f"--mpi={plugin}", "--kill-on-bad-exit=1", "/bin/echo", "-m",
                                               "mpirnn.train", "--set", "train.steps=2"]
    assert f"srun --mpi={plugin};" in run.stdout


# ---- the real trainer -------------------------------------------------------------------------

# A small float64 model so that a whole run takes seconds and losses compare tightly.
SMALL = ["--set", "model.hidden=32", "--set", "model.layers=1", "--set", "model.embed=16",
         "--set", "model.dtype=float64", "--set", "data.seq_len=32", "--set", "data.batch_size=8",
         "--set", "train.steps=60", "--set", "output.progress=false",
         "--set", "output.sample_bytes=0"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, slurm):
    if not (slurm.repo / "mpirnn" / "train.py").exists():
        pytest.skip("mpirnn.train is not there yet")
    out = tmp_path_factory.mktemp("data") / "stdlib"
    subprocess.run([str(slurm.python), "-m", "mpirnn.data", "prepare", "--out", str(out),
                    "--stdlib", "--max-bytes", "200000"], check=True, timeout=120, cwd=slurm.repo)
    return out


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory, slurm):
    """The same run launched directly with mpirun (4 ranks, no Slurm): loss per step."""
    path = tmp_path_factory.mktemp("reference") / "metrics.jsonl"
    mpirun = slurm.python.parent / "mpirun"
    run = subprocess.run(
        [str(mpirun), "-n", "4", str(slurm.python), "-m", "mpirnn.train",
         *SMALL, "--set", f"data.path={small_data}", "--set", f"output.metrics={path}"],
        cwd=slurm.repo, capture_output=True, text=True, timeout=240, env=slurm.clean_env())
    assert run.returncode == 0, run.stdout + run.stderr
    return losses(path)


def losses(path):
    return {m["step"]: m["loss"] for m in metrics(path) if not m.get("summary")}


@cluster
@pytest.mark.timeout(300)
def test_real_job_matches_mpirun(tmp_path, sbatch, slurm, small_data, reference):
    """sbatch --nodes=2 slurm/job.sh gives the direct mpirun run's losses, step by step, with
    ranks 0,1 on the first node and 2,3 on the second."""
    path = tmp_path / "metrics.jsonl"
    job = sbatch(slurm.repo / "slurm" / "job.sh", *SMALL, "--set", f"data.path={small_data}",
                 "--set", f"output.metrics={path}", opts=["--nodes=2"], env=slurm.clean_env())
    record = job.wait(timeout=240)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), job.explain()
    got = losses(path)
    assert sorted(got) == sorted(reference), job.explain()
    assert got == pytest.approx(reference, rel=1e-9, abs=0)
    summary = [m for m in metrics(path) if m.get("summary")][-1]
    nodes = slurm.hostnames(record["NodeList"])
    placement = sorted(summary["placement"], key=lambda p: p["rank"])
    assert [p["slurm_node"] for p in placement] == [nodes[0], nodes[0], nodes[1], nodes[1]]
    assert [p["local_rank"] for p in placement] == [0, 1, 0, 1]


@cluster
@pytest.mark.timeout(300)
def test_real_job_preempted_resumes_to_the_same_losses(tmp_path, sbatch, slurm, small_data,
                                                       reference):
    """USR1 mid-run: the trainer checkpoints, job.sh requeues, the second run resumes, and every
    step's loss (before and after the interruption) equals the uninterrupted run's."""
    path = tmp_path / "metrics.jsonl"
    job = sbatch(slurm.repo / "slurm" / "job.sh", *SMALL, "--set", f"data.path={small_data}",
                 "--set", f"output.metrics={path}", "--set", f"checkpoint.dir={tmp_path / 'ckpt'}",
                 opts=["--nodes=2"], env=slurm.clean_env())
    job.wait_until("step 10", lambda: len(losses(path)) >= 10, timeout=180)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job.id], check=True, timeout=15)
    record = job.wait(timeout=240)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), job.explain()
    assert record["Restarts"] == "1", job.explain()
    assert "requeueing job" in job.text(), job.explain()
    steps = [m["step"] for m in metrics(path) if not m.get("summary")]
    assert steps == sorted(reference), job.explain()      # each step once: resumed, not redone
    assert losses(path) == pytest.approx(reference, rel=1e-9, abs=0)


@cluster
@pytest.mark.timeout(180)
def test_real_job_bad_config_fails_fast(tmp_path, sbatch, slurm, small_data):
    """A bad key ends the job FAILED within a minute, the one-line cause in its output."""
    job = sbatch(slurm.repo / "slurm" / "job.sh", *SMALL, "--set", f"data.path={small_data}",
                 "--set", "train.no_such_key=1", opts=["--nodes=2"], env=slurm.clean_env())
    record = job.wait(timeout=120)
    assert record["JobState"] == "FAILED", job.explain()
    causes = [ln for ln in job.text().splitlines() if "no_such_key" in ln]
    assert causes and causes[0].startswith("mpirnn"), job.explain()
    assert time.monotonic() - job.submitted < 90, job.explain()
