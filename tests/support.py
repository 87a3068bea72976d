"""Shared test helpers: small real datasets, the repo root, and the test device.

Imported as `from support import ...` (tests/conftest.py puts this folder on sys.path; a
module named conftest would clash with tests/slurm/conftest.py).

MPIRNN_TEST_DEVICE=cuda runs the tensor tests on the GPU (default: cpu).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEST_DEVICE = os.environ.get("MPIRNN_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cuda":  # as mpirnn.distributed.device does for runs: true float32 (no TF32) in the exactness tests
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def make_token_dataset(out: Path, length: int = 20_000, shard_size: int = 6_000, seed: int = 0,
                       val_fraction: float = 0.0) -> Path:
    """A real sharded byte dataset (several shards, so windows cross shard boundaries).

    No val split by default: every step is a train step, as the MPI and bad-input tests expect
    (four train shards: shard-00000.h5 to shard-00003.h5).
    """
    from mpirnn.data.prepare import prepare_npy

    rng = np.random.default_rng(seed)
    # Text-like bytes: a repeated phrase with noise, so a model can learn something.
    phrase = np.frombuffer(b"def step(self, x):\n    return self.cell(x)\n", dtype=np.uint8)
    tokens = np.resize(phrase, length).astype(np.int32)
    noise = rng.random(length) < 0.1
    tokens[noise] = rng.integers(32, 127, noise.sum())
    npy = out.parent / f"{out.name}.npy"
    np.save(npy, tokens)
    prepare_npy(npy, out, shard_size=shard_size, vocab_size=256, val_fraction=val_fraction)
    return out


def make_series_dataset(out: Path, length: int = 6_000, features: int = 3, seed: int = 0,
                        val_fraction: float = 0.0) -> Path:
    """A real sharded float32 series (three train shards; normalized by the Reader)."""
    from mpirnn.data.prepare import prepare_npy

    t = np.arange(length)[:, None]
    rng = np.random.default_rng(seed)
    series = np.sin(t / (5.0 + np.arange(features))) + 0.05 * rng.standard_normal((length, features))
    npy = out.parent / f"{out.name}.npy"
    np.save(npy, series.astype(np.float32))
    prepare_npy(npy, out, shard_size=2_500, val_fraction=val_fraction)
    return out


def reseal_dataset(root: Path) -> Path:
    """Record the shards' current sizes and digests in manifest.json, as prepare would have.

    The trainer refuses any shard changed after prepare; a test that plants damage only the
    later checks can find (a NaN with data.validate=false, say) reseals the copy first.
    """
    import json

    from mpirnn.data.fingerprint import file_digests

    path = root / "manifest.json"
    obj = json.loads(path.read_text())
    for shards in [obj["shards"], *(split["shards"] for split in (obj.get("splits") or {}).values())]:
        for shard in shards:
            shard["bytes"], shard["sha256"], shard["fingerprint"] = file_digests(root / shard["file"])
    path.write_text(json.dumps(obj, indent=2))
    return root


def factorizations(n: int, layers: int, hidden: int) -> list[tuple[int, int, int, int]]:
    """Every grid (dp, sp, pp, tp) with dp*sp*pp*tp = n that a model of `layers` layers and
    `hidden` units can run (pp <= layers, tp dividing hidden): the MPI tests' whole matrix."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return [(dp, sp, pp, n // (dp * sp * pp)) for dp in divisors for sp in divisors for pp in divisors
            if n % (dp * sp * pp) == 0 and pp <= layers and hidden % (n // (dp * sp * pp)) == 0]


def grid_settings(shape: tuple[int, int, int, int]) -> dict:
    """A (dp, sp, pp, tp) grid as --set settings."""
    return dict(zip(("parallel.dp", "parallel.sp", "parallel.pp", "parallel.tp"), shape))


def mpirun_path() -> Path:
    """The mpirun beside the interpreter (the venv's mpich), else the one on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "mpirun"
    return beside if beside.exists() else Path(shutil.which("mpirun") or beside)


def train_under_mpirun(n: int, settings: dict, cwd: Path, timeout: int = 150):
    """`mpirun -n N python -m mpirnn.train --set key=value ...` in `cwd`, killed after `timeout` seconds
    (skips the test when there is no mpirun); returns the finished process."""
    import subprocess
    import sys

    import pytest

    mpirun = mpirun_path()
    if not mpirun.exists():
        pytest.skip("no mpirun next to the Python interpreter or on PATH")
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run(["timeout", "-k", "10", str(timeout), str(mpirun), "-n", str(n), sys.executable, "-m",
                           "mpirnn.train", *args], cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=timeout + 20)


def run_data_cli(*args, timeout: int = 120):
    """`python -m mpirnn.data ARGS` in a subprocess, as a user runs it (the real exit status)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mpirnn.data", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(result, out: Path, *words: str) -> None:
    """A refused prepare: exit status 2, one line `mpirnn.data: ...` naming `words`, and
    nothing written (not even the --out directory)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mpirnn.data: "), result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "prepared" not in result.stdout and not out.exists(), f"{out} was written"


def make_dated_series(out: Path, length: int = 400, frequency: str = "daily", start: str = "2021-01-04",
                      features: int = 2, val_fraction: float = 0.1, shard_size: int | None = 150,
                      skip: tuple[int, ...] = (), season: int | None = None) -> Path:
    """A series prepared from a CSV with a time column `date` (steps in `skip` left out of the file,
    so prepare's --fill interpolate closes them); the CSV is written beside the dataset."""
    from mpirnn.data.prepare import prepare_csv

    step = {"hourly": np.timedelta64(1, "h"), "daily": np.timedelta64(1, "D"),
            "weekly": np.timedelta64(7, "D")}.get(frequency)
    start_time = np.datetime64(start, "s")
    rng = np.random.default_rng(3)
    t = np.arange(length)
    values = np.sin(2 * np.pi * t[:, None] / (7.0 + np.arange(features))) + 0.1 * rng.standard_normal((length, features))
    csv = out.parent / f"{out.name}.csv"
    with open(csv, "w") as f:
        f.write("date," + ",".join(f"v{j}" for j in range(features)) + "\n")
        for i in range(length):
            if i in skip:
                continue
            when = (start_time + i * step if step is not None
                    else (start_time.astype("datetime64[M]") + i).astype("datetime64[D]"))
            f.write(f"{when}," + ",".join(repr(float(v)) for v in values[i]) + "\n")
    prepare_csv(csv, out, columns=[f"v{j}" for j in range(features)], time_column="date",
                fill="interpolate" if skip else None, val_fraction=val_fraction, shard_size=shard_size,
                season=season)
    return out


def shared_temp_dir(world, prepare):
    """A temporary folder every rank of `world` sees, made and filled by rank 0 (`prepare(path)`) and
    removed after; in a module fixture: `yield from shared_temp_dir(world, prepare)`."""
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="mpirnn-test-") if world.rank == 0 else None
    path = Path(world.bcast(path, root=0))
    if world.rank == 0:
        prepare(path)
    world.Barrier()
    yield path
    world.Barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def metric_records(world, metrics: Path) -> list[dict]:
    """A run's metrics lines, the summary left out, once every rank is past the run."""
    import json
    world.Barrier()
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if not r.get("summary")]
