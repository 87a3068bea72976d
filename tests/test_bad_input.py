"""Bad input through the real launcher: each case ends the job non-zero with one clear line, fast.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_bad_input.py

Every case runs `mpirun -n N python -m mpirnn.train ...` (N = 1 and 4, or 2 and 4 where a
case needs two ranks; 4 is oversubscribed on a 2-core machine, which is fine) and checks:
a non-zero exit, exactly one stderr line starting with `mpirnn:` that names the cause,
no traceback, and an exit in well under the 60 s kill timeout (no rank left hanging).
The datasets are prepared once per module; each corrupt variant is a copy of a good one.
The runs are independent, so they start together, as many at once as the cores allow
(class Cores), and each test checks its own run's result.
Set MPIRNN_BAD_INPUT_TABLE=FILE to append each case's line and exit time as JSON Lines
(the source of the docs' bad-input table).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from support import make_series_dataset, make_token_dataset, reseal_dataset

from mpirnn.data.manifest import MANIFEST_NAME
from mpirnn.data.prepare import prepare_npy

pytestmark = pytest.mark.timeout(180)

MPIRUN = Path(sys.executable).parent / "mpirun"
KILL_AFTER_S = 60
FAST_S = 30
# MPI_Abort makes MPICH print its own notice, e.g.
#   Abort(1) on node 1 (rank 1 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 1) - process 1
# That is the only stderr line allowed besides the one `mpirnn:` line.
MPICH_ABORT = re.compile(r"application called MPI_Abort\(")
SMALL = {"model.hidden": 16, "model.layers": 1, "model.embed": 8, "data.seq_len": 16,
         "data.batch_size": 8, "train.steps": 2, "output.progress": "false", "output.sample_bytes": 0}

if not MPIRUN.exists():
    MPIRUN = Path(shutil.which("mpirun") or MPIRUN)


# -- running the trainer -----------------------------------------------------------------

def settings(tmp: Path, data: Path | str, **extra) -> list[str]:
    values = {**SMALL, "data.path": data, "output.metrics": tmp / "m.jsonl", **extra}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@dataclass
class Result:
    status: int | None  # None: killed after KILL_AFTER_S (a rank hung)
    out: str
    err: str
    seconds: float


def launch(n: int, args: list, cwd: Path) -> Result:
    """`mpirun -n n python -m mpirnn.train args`, killed whole after KILL_AFTER_S."""
    env = {k: v for k, v in os.environ.items() if k != "MPIRNN_TRACEBACK"}
    env["OMP_NUM_THREADS"] = "1"
    started = time.monotonic()
    # A session of its own, so a hung job is killed whole (mpirun and every rank).
    proc = subprocess.Popen([str(MPIRUN), "-n", str(n), sys.executable, "-m", "mpirnn.train", *map(str, args)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=KILL_AFTER_S)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = None
    return Result(status, out, err, time.monotonic() - started)


class Cores:
    """A counting semaphore over CPU cores: a job of n ranks holds min(n, cores) of them.

    The runs are independent, so they overlap: two 1-rank runs share a 2-core machine,
    a 4-rank run has it alone.
    """

    def __init__(self, total: int):
        self.total, self.free = total, total
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int):
        want = min(n, self.total)
        with self.changed:
            self.changed.wait_for(lambda: self.free >= want)
            self.free -= want
        try:
            yield
        finally:
            with self.changed:
                self.free += want
                self.changed.notify_all()


def check_failure(result: Result, n: int, keyword: str) -> str:
    """The failure contract; returns the one `mpirnn:` line."""
    shown = f"exit {result.status} after {result.seconds:.1f} s\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert result.status is not None, f"mpirun -n {n} still running after {KILL_AFTER_S} s (a rank hangs): {shown}"
    assert result.status != 0, f"expected a failure, got {shown}"
    assert "Traceback" not in result.err and "Traceback" not in result.out, shown
    lines = [line for line in result.err.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("mpirnn:")]
    others = [line for line in lines if not line.startswith("mpirnn:") and not MPICH_ABORT.search(line)]
    assert len(ours) == 1, f"expected exactly one mpirnn: line, {shown}"
    assert not others, f"unexpected stderr lines {others}, {shown}"
    assert re.search(keyword, ours[0], re.IGNORECASE), f"{keyword!r} not in {ours[0]!r}"
    assert result.seconds < FAST_S, f"took {result.seconds:.1f} s to fail: {shown}"
    return ours[0]


# -- datasets, prepared once -----------------------------------------------------------

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Good datasets to copy: tokens (4 shards, uint8), series (3 shards, float32), tokens int32."""
    root = tmp_path_factory.mktemp("good")
    ids = np.random.default_rng(0).integers(0, 300, 4_000).astype(np.int32)
    np.save(root / "wide.npy", ids)
    prepare_npy(root / "wide.npy", root / "wide", vocab_size=300, shard_size=1_500)
    return {"tokens": make_token_dataset(root / "tokens"), "series": make_series_dataset(root / "series"),
            "wide": root / "wide"}


def copy_of(good: dict, name: str, tmp: Path) -> Path:
    target = tmp / f"{name}-copy"
    shutil.copytree(good[name], target)
    return target


def edit_manifest(root: Path, change) -> None:
    path = root / MANIFEST_NAME
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def replace_dataset(shard: Path, data: np.ndarray, name: str = "data") -> None:
    """Rewrite a shard's dataset in place (h5py r+), keeping the file and manifest entry."""
    with h5py.File(shard, "r+") as f:
        attrs = dict(f["data"].attrs)
        del f["data"]
        dataset = f.create_dataset(name, data=data)
        dataset.attrs.update(attrs)


def shard_data(shard: Path) -> np.ndarray:
    with h5py.File(shard, "r") as f:
        return f["data"][...]


# -- the cases ---------------------------------------------------------------------------
# Each builds its bad input under `tmp` and returns (arguments, keyword the line must contain).
# The last shard is damaged where it matters: at -n 4 another rank than 0 validates it, so the
# cause must be agreed and reported once.

def missing_dir(good, tmp, n):
    return settings(tmp, tmp / "no-such-dataset"), "does not exist"


def no_manifest(good, tmp, n):
    data = copy_of(good, "tokens", tmp)
    (data / MANIFEST_NAME).unlink()
    return settings(tmp, data), "no manifest.json"


def truncated_shard(good, tmp, n):
    data = copy_of(good, "tokens", tmp)
    shard = data / "shard-00003.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return settings(tmp, data), r"shard-00003\.h5.*(truncated|corrupt)"


def deleted_shard(good, tmp, n):
    data = copy_of(good, "tokens", tmp)
    (data / "shard-00002.h5").unlink()
    return settings(tmp, data), r"shard-00002\.h5.*missing"


def wrong_dataset_name(good, tmp, n):
    data = copy_of(good, "tokens", tmp)
    with h5py.File(data / "shard-00003.h5", "r+") as f:
        f.move("data", "tokens")
    return settings(tmp, data), r"no HDF5 dataset named 'data'.*tokens"


def wrong_dtype(good, tmp, n):
    data = copy_of(good, "tokens", tmp)
    shard = data / "shard-00001.h5"
    replace_dataset(shard, shard_data(shard).astype(np.float32))
    return settings(tmp, data), r"dtype is float32.*uint8"


def wrong_ndim(good, tmp, n):
    data = copy_of(good, "tokens", tmp)
    shard = data / "shard-00003.h5"
    replace_dataset(shard, shard_data(shard)[:, None])
    return settings(tmp, data), r"2 dimension"


def nan_in_series(good, tmp, n):
    data = copy_of(good, "series", tmp)
    with h5py.File(data / "shard-00002.h5", "r+") as f:
        f["data"][17, 1] = np.nan
    return settings(tmp, data), r"NaN at step \d+, feature 1"


def token_past_vocabulary(good, tmp, n):
    data = copy_of(good, "wide", tmp)
    with h5py.File(data / "shard-00002.h5", "r+") as f:
        f["data"][5] = 1_000
    return settings(tmp, data), r"token id 1000 .*outside the vocabulary"


def truncated_shard_unvalidated(good, tmp, n):
    # With data.validate=false values are not scanned, but every shard is still opened before
    # training (by the rank whose share it is), so the damage is agreed and reported once.
    data = copy_of(good, "tokens", tmp)
    shard = data / "shard-00002.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return settings(tmp, data, **{"data.validate": "false"}), r"shard-00002\.h5.*(truncated|corrupt)"


def nan_found_in_training(good, tmp, n):
    # Not validated: the NaN reaches the loss, and the step is refused on every rank at once.
    data = copy_of(good, "series", tmp)
    for shard in sorted(data.glob("shard-*.h5")):
        with h5py.File(shard, "r+") as f:
            f["data"][:, 0] = np.nan
    # Resealed: the shards' new sizes and checksums are recorded, as if prepare had written the
    # NaN (otherwise the start-up check refuses the changed files before any step).
    reseal_dataset(data)
    return settings(tmp, data, **{"data.validate": "false"}), r"non-finite loss.* at step 1 on rank"


def flipped_byte_unvalidated(good, tmp, n):
    # One byte of a shard's values changed after prepare: with data.validate=false no value is
    # scanned, but every shard's size and checksum are still checked before training.
    data = copy_of(good, "tokens", tmp)
    with h5py.File(data / "shard-00003.h5", "r+") as f:
        f["data"][10] = (int(f["data"][10]) + 1) % 256
    return settings(tmp, data, **{"data.validate": "false"}), r"shard-00003\.h5: checksum"


def empty_dataset(good, tmp, n):
    data = copy_of(good, "tokens", tmp)

    def empty(obj):
        obj["length"], obj["shards"] = 0, []
    edit_manifest(data, empty)
    return settings(tmp, data), "empty dataset"


def seq_shorter_than_segments(good, tmp, n):
    # sp = n ranks, one data-parallel replica: seq_len one step short of a step per segment.
    return settings(tmp, good["tokens"], **{"parallel.sp": n, "parallel.dp": 1, "data.seq_len": n - 1}), \
        rf"seq_len = {n - 1} .*{n} sequence-parallel segments"


def grid_product(good, tmp, n):
    dp = 3 if n == 4 else 2
    return settings(tmp, good["tokens"], **{"parallel.dp": dp, "parallel.sp": 1}), \
        rf"{dp} ranks but the job has {n}.*dp\*sp\*pp\*tp"


def more_stages_than_layers(good, tmp, n):
    # SMALL has one layer: two pipeline stages cannot each own one.
    return settings(tmp, good["tokens"], **{"parallel.pp": 2}), \
        r"parallel\.pp = 2 but model\.layers = 1: every pipeline stage needs at least one layer"


def chunks_longer_than_the_segment(good, tmp, n):
    return settings(tmp, good["tokens"], **{"parallel.pp": 2, "model.layers": 2, "parallel.chunks": 17}), \
        r"parallel\.chunks = 17 but the shortest time segment has 16"


def hidden_not_divisible_by_tp(good, tmp, n):
    return settings(tmp, good["tokens"], **{"parallel.tp": 2, "model.hidden": 15}), \
        r"model\.hidden = 15 is not divisible by parallel\.tp = 2.*use model\.hidden = 14 or 16"


def unknown_key(good, tmp, n):
    return settings(tmp, good["tokens"], **{"train.stepz": 3}), r"train\.stepz.*did you mean 'steps'"


def wrong_type(good, tmp, n):
    return settings(tmp, good["tokens"], **{"train.steps": "abc"}), r"train\.steps must be int"


def negative_batch(good, tmp, n):
    return settings(tmp, good["tokens"], **{"data.batch_size": -8}), r"data\.batch_size = -8 must be positive"


def unknown_cell(good, tmp, n):
    return settings(tmp, good["tokens"], **{"model.cell": "lstn"}), r"'lstn'.*did you mean 'lstm'"


def bad_config_file(good, tmp, n):
    path = tmp / "run.toml"
    path.write_text('[model]\ncell = "gru"\nhiden = 16\n')
    return ["--config", path, *settings(tmp, good["tokens"])], r"run\.toml.*model\.hiden.*did you mean 'hidden'"


_trained = {}
_trained_lock = threading.Lock()


def trained_checkpoint(good, tmp_root: Path) -> Path:
    """A checkpoint directory from a real 2-step run with model.hidden=16 (made once; grid-independent)."""
    with _trained_lock:
        if "dir" not in _trained:
            run = tmp_root / "trained"
            run.mkdir()
            result = launch(1, settings(run, good["tokens"], **{"checkpoint.dir": run / "ckpt"}), run)
            assert result.status == 0, f"the good run failed:\n{result.out}\n{result.err}"
            assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["ckpt-00000002.json", "ckpt-00000002.pt"]
            _trained["dir"] = run / "ckpt"
        return _trained["dir"]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def checkpoint_of_another_shape(good, tmp, n):
    ckpt = tmp / "ckpt"
    shutil.copytree(trained_checkpoint(good, tmp.parent), ckpt)
    before = snapshot(ckpt)

    def unchanged(line):
        assert "model.hidden" in line or "matching model settings" in line  # says what to do
        assert snapshot(ckpt) == before, "the old checkpoint was changed or removed"
    args = settings(tmp, good["tokens"], **{"model.hidden": 32, "train.steps": 4, "checkpoint.dir": ckpt,
                                            "checkpoint.resume": "true"})
    return args, r"model\.hidden = 32 here, 16 in the checkpoint", unchanged


def fresh_run_into_used_checkpoint_dir(good, tmp, n):
    # Another run's checkpoint (step 2) is there; a fresh run (resume=false) must refuse before
    # compute and delete nothing (it used to finish and prune the other run's checkpoints).
    ckpt = tmp / "ckpt"
    shutil.copytree(trained_checkpoint(good, tmp.parent), ckpt)
    before = snapshot(ckpt)

    def unchanged(line):
        assert "checkpoint.resume=true" in line and "checkpoint.overwrite=true" in line
        assert snapshot(ckpt) == before, "the other run's checkpoint was changed or removed"
        assert not (tmp / "m.jsonl").exists() or not (tmp / "m.jsonl").read_text().strip(), "a step was trained"
    args = settings(tmp, good["tokens"], **{"train.steps": 4, "checkpoint.dir": ckpt, "checkpoint.every": 1,
                                            "checkpoint.keep": 1})
    return args, r"already holds 1 checkpoint.*newest: step 2", unchanged


SINGLE_AND_MANY = [missing_dir, no_manifest, truncated_shard, deleted_shard, wrong_dataset_name, wrong_dtype,
                   wrong_ndim, nan_in_series, token_past_vocabulary, empty_dataset, unknown_key, wrong_type,
                   negative_batch, unknown_cell, bad_config_file, grid_product, checkpoint_of_another_shape,
                   fresh_run_into_used_checkpoint_dir,
                   truncated_shard_unvalidated, nan_found_in_training, flipped_byte_unvalidated]
# These grids need more than one rank, so they run at -n 2 and -n 4.
SEVERAL_RANKS = [seq_shorter_than_segments, more_stages_than_layers, chunks_longer_than_the_segment,
                 hidden_not_divisible_by_tp]
CASES = {case.__name__: case for case in SINGLE_AND_MANY + SEVERAL_RANKS}
RUNS = ([(case.__name__, n) for case in SINGLE_AND_MANY for n in (1, 4)]
        + [(case.__name__, n) for case in SEVERAL_RANKS for n in (2, 4)])


@pytest.fixture(scope="module")
def runs(request, good, tmp_path_factory):
    """Start every selected run at once (overlapped, bounded by the cores); {(case, n): Future}."""
    if not MPIRUN.exists():
        pytest.skip("no mpirun next to the Python interpreter or on PATH")
    # Only the runs of the tests selected in this session (-k, node ids), in test order.
    selected = [item.callspec.params["run"] for item in request.session.items
                if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
                and "run" in item.callspec.params]
    cores = Cores(max(1, len(os.sched_getaffinity(0))))
    root = tmp_path_factory.mktemp("bad-input")

    def job(name, n):
        tmp = root / f"{name}-{n}"
        tmp.mkdir()
        with cores.hold(n):  # building may run the trainer too (the checkpoint case)
            built = CASES[name](good, tmp, n)
            result = launch(n, built[0], tmp)
        keyword = built[1]
        return result, keyword, (built[2] if len(built) > 2 else None)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=cores.total)
    futures = {run: pool.submit(job, *run) for run in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run[0]}-n{run[1]}")
def test_bad_input(run, runs, record_property):
    name, n = run
    result, keyword, after = runs[run].result()
    line = check_failure(result, n, keyword)
    record_property("exit_s", round(result.seconds, 2))
    record_property("line", line)
    if after is not None:
        after(line)
    table = os.environ.get("MPIRNN_BAD_INPUT_TABLE")
    if table:
        with open(table, "a") as handle:
            handle.write(json.dumps({"case": name, "ranks": n, "exit_status": result.status,
                                     "exit_s": round(result.seconds, 2), "line": line}) + "\n")
