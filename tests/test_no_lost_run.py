"""Nothing a run has done is lost, and nothing it cannot do is found too late (issue 21).

    cd /work/main && .venv/bin/python -m pytest -q tests/test_no_lost_run.py

Through the real launcher (`mpirun -n 2 python -m mpirnn.train`): a checkpoint.dir that cannot
be written is refused before step 1; a full disk (a small tmpfs) keeps the earlier checkpoint,
leaves no partial file, names the path and the bytes needed, and the run ends with status 1 when
its last checkpoint could not be written; batch-1 sequence parallelism runs by itself; resuming
from copied checkpoints starts a new run folder and leaves the original's metrics alone; a run
that skips most of its steps for non-finite values fails; `generate` takes any byte as a prompt;
the progress bar keeps to stderr. Mounting needs root: those two tests skip, saying so, without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launcher import SMALL, Job, small_datasets, assert_intact, assert_one_line, checkpoint_steps, records
from launcher import _no_job_left_behind  # noqa: F401  (an autouse fixture: kills what a failed test left running)
from support import ROOT

pytestmark = pytest.mark.timeout(240)
BEFORE_STEP_1_S = 40  # start-up, data checks and the refusal; far less than a run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_datasets(tmp_path_factory.mktemp("lost-run-data"))


def run(n: int, data: Path, out: Path, fault: str | None = None, **settings) -> Job:
    return Job(n, {"data.path": data / "tokens", "output.metrics": out / "m.jsonl", **settings}, fault=fault)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs (options as given) under tmp_path; skip where mounting is not allowed."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


# -- checkpoint.dir, checked before step 1 ---------------------------------------------------

def test_checkpoint_dir_under_a_regular_file_is_refused_before_step_1(data, tmp_path):
    (tmp_path / "plain-file").write_text("not a directory")
    target = tmp_path / "plain-file" / "ckpt"
    job = run(2, data, tmp_path, **{"checkpoint.dir": target, "train.steps": 400})
    assert job.wait() == 1, job.report()
    line = assert_one_line(job, rf"^mpirnn: error: checkpoint.dir {target} cannot be used: not a directory")
    assert "before step 1" in line and "bug or a fault" not in line
    assert not job.seen, f"steps ran before the refusal: {sorted(job.seen)}"
    assert job.ended - job.started < BEFORE_STEP_1_S


def test_read_only_checkpoint_dir_is_refused_before_step_1(data, tmp_path, tmpfs):
    target = tmpfs("ro,size=1m") / "ckpt"
    job = run(2, data, tmp_path, **{"checkpoint.dir": target, "train.steps": 400})
    assert job.wait() == 1, job.report()
    assert_one_line(job, rf"^mpirnn: error: checkpoint.dir {target} cannot be used: read-only file system")
    assert not job.seen


# -- a full disk --------------------------------------------------------------------------------

def test_full_disk_keeps_the_earlier_checkpoint_and_fails_the_run(data, tmp_path, tmpfs):
    """One checkpoint of this model (~1.8 MB) fits on a 3 MB tmpfs and the next does not."""
    directory = tmpfs("size=3m") / "ckpt"
    model = {"model.hidden": 128, "model.embed": 64}
    job = run(2, data, tmp_path, **model, **{"checkpoint.dir": directory, "checkpoint.every": 5, "train.steps": 15})
    assert job.wait() == 1, job.report()
    lines = [line for line in job.stderr_lines if line.startswith("mpirnn:")]
    assert any("warning: checkpoint.dir" in line and "two will not fit" in line for line in lines), job.report()
    full = [line for line in lines if "could not be written: No space left on device" in line]
    assert len(full) == 2, job.report()  # steps 10 and 15
    assert f"{directory}/ckpt-00000010.pt" in full[0] and "it needs " in full[0] and "MB" in full[0]
    assert "the newest checkpoint on disk is step 5" in full[0] and "next checkpoint is due at step 15" in full[0]
    assert lines[-1].startswith("mpirnn: error: the last checkpoint (step 15) could not be written"), job.report()
    assert "bug or a fault" not in "\n".join(lines)
    assert [r["step"] for r in records(tmp_path / "m.jsonl")] == list(range(1, 16)), "training must go on"
    assert checkpoint_steps(directory) == [5]
    assert_intact(directory, 5)
    assert sorted(p.name for p in directory.iterdir()) == ["ckpt-00000005.json", "ckpt-00000005.pt"], \
        "a failed write must leave no partial file"


# -- batch-1 sequence parallelism ---------------------------------------------------------------

def test_sequence_parallel_at_batch_1_picks_one_microbatch(data, tmp_path):
    settings = {"data.batch_size": 1, "data.seq_len": 64, "model.layers": 2, "train.steps": 4}
    serial = run(1, data, tmp_path / "serial", **settings)
    assert serial.wait() == 0, serial.report()
    job = run(2, data, tmp_path / "sp", **settings, **{"parallel.sp": 2})
    assert job.wait() == 0, job.report()
    assert "mpirnn: one microbatch: 1 row(s) per step over 1 data-parallel group(s) cannot be split" in job.stdout
    expected = [r["loss"] for r in records(tmp_path / "serial" / "m.jsonl")]
    got = [r["loss"] for r in records(tmp_path / "sp" / "m.jsonl")]
    assert got == pytest.approx(expected, rel=1e-5)


# -- branching a run ----------------------------------------------------------------------------

def test_resuming_copied_checkpoints_branches_and_leaves_the_original_alone(data, tmp_path):
    original = tmp_path / "runs" / "k1"
    first = Job(2, {"data.path": data / "tokens", "output.run_name": "k1", "checkpoint.dir": original / "ckpt",
                    "checkpoint.every": 3, "train.steps": 6}, cwd=tmp_path)
    assert first.wait() == 0, first.report()
    metrics = original / "metrics.jsonl"
    before = metrics.read_bytes()
    shutil.copytree(original / "ckpt", tmp_path / "copy")
    for suffix in ("json", "pt"):  # the copy resumes from step 3
        (tmp_path / "copy" / f"ckpt-00000006.{suffix}").unlink()

    # A branch told to write the original's metrics file is refused before any step.
    def refused(settings: dict, pattern: str) -> None:
        job = Job(2, settings, cwd=tmp_path)
        assert job.wait() == 1, job.report()
        assert_one_line(job, pattern)
        assert metrics.read_bytes() == before

    refused({"checkpoint.dir": tmp_path / "copy", "checkpoint.resume": "true", "train.steps": 8,
             "output.run_name": "k1"},
            r"^mpirnn: error: these checkpoints were copied from run k1 .* give the branch its own output.run_name")

    branch = Job(2, {"checkpoint.dir": tmp_path / "copy", "checkpoint.resume": "true", "train.steps": 8}, cwd=tmp_path)
    assert branch.wait() == 0, branch.report()
    assert metrics.read_bytes() == before, "the original run's metrics were rewritten"
    said = [line for line in branch.stdout.splitlines() if "branches from run k1 at step 3" in line]
    assert said, branch.report()
    folders = [p for p in (tmp_path / "runs").iterdir() if p.name != "k1"]
    assert len(folders) == 1, folders
    assert [r["step"] for r in records(folders[0] / "metrics.jsonl")] == [4, 5, 6, 7, 8]

    # The same run, resumed in place, continues its own file.
    same = Job(2, {"checkpoint.dir": original / "ckpt", "checkpoint.resume": "true", "train.steps": 8}, cwd=tmp_path)
    assert same.wait() == 0, same.report()
    assert [r["step"] for r in records(metrics)] == list(range(1, 9))


# -- non-finite steps -----------------------------------------------------------------------------

def test_a_run_skipping_every_step_fails(data, tmp_path):
    job = Job(2, {"data.path": data / "series", "train.steps": 20, "train.skip_nonfinite": "true",
                  "output.metrics": tmp_path / "m.jsonl"}, fault="nan:rank=1")
    assert job.wait() == 1, job.report()
    errors = [line for line in job.stderr_lines if line.startswith("mpirnn: error:")]
    assert len(errors) == 1 and "3 of this run's 20 steps had non-finite losses" in errors[0], job.report()
    assert "train.max_skipped = 0.1" in errors[0]
    assert len([line for line in job.stderr_lines if "skipped: non-finite" in line]) == 2


# -- generate: any byte as a prompt ---------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_checkpoint(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generate")
    job = run(1, data, out, **{"checkpoint.dir": out / "ckpt", "train.steps": 2})
    assert job.wait() == 0, job.report()
    return out / "ckpt"


def generate(checkpoint: Path, *args: bytes | str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mpirnn.generate", "--checkpoint", str(checkpoint), "--bytes", "5", *args]
    return subprocess.run([a if isinstance(a, bytes) else a.encode() for a in command], cwd=ROOT,
                          capture_output=True, timeout=120)


def test_generate_takes_a_prompt_that_is_not_utf8(byte_checkpoint):
    done = generate(byte_checkpoint, "--prompt", b"caf\xe9")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith("caf\ufffd".encode()), done.stdout


def test_generate_takes_prompts_as_bytes(byte_checkpoint, tmp_path):
    done = generate(byte_checkpoint, "--prompt-bytes", "00ff0a")
    assert done.returncode == 0, done.stderr.decode()
    (tmp_path / "start.bin").write_bytes(b"\x00\x01")
    done = generate(byte_checkpoint, "--prompt-file", str(tmp_path / "start.bin"))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"\x00\x01")


@pytest.mark.parametrize("args,said", [
    (("--prompt-bytes", "0g"), "--prompt-bytes '0g' is not hex bytes"),
    (("--prompt-bytes", ""), "--prompt-bytes is empty"),
    (("--prompt-file", "/nonexistent/start.bin"), "--prompt-file /nonexistent/start.bin cannot be read"),
])
def test_generate_refuses_bad_prompts_in_one_line(byte_checkpoint, args, said):
    done = generate(byte_checkpoint, *args)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr.decode()
    assert lines[0].startswith("mpirnn: error: ") and said in lines[0], lines[0]


# -- the progress bar -----------------------------------------------------------------------------

def test_progress_bar_keeps_to_stderr_and_is_quiet_in_a_log(data, tmp_path):
    job = Job(1, {"data.path": data / "tokens", "output.metrics": tmp_path / "m.jsonl", "train.steps": 40},
              base={**SMALL, "output.progress": "true"})
    assert job.wait() == 0, job.report()
    assert "train:" not in job.stdout, "the progress bar belongs on stderr"
    redraws = "\n".join(line for _, line in job.err).count("\r")
    assert "train:" in "\n".join(job.stderr_lines) and redraws <= 3, f"{redraws} redraws in a 40-step log"
