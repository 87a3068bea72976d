"""The real trainer under mpirun refuses a shard changed after prepare, before training.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_data_trainer_checks.py

`mpirun -n 2 python -m mpirnn.train` on a copy of a good token dataset with one byte of a
shard's values flipped (still valid HDF5, every id inside the vocabulary) and
data.validate=false: the job must end with exit status 1 and one `mpirnn: error:` line
naming the shard, before any step is logged. Before this check existed it trained, rc 0.
A good run on a series with a val split and normalization shows the trainer reads such
datasets (train split only, normalized values).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from support import make_series_dataset, make_token_dataset

pytestmark = pytest.mark.timeout(180)

MPIRUN = Path(sys.executable).parent / "mpirun"
if not MPIRUN.exists():
    MPIRUN = Path(shutil.which("mpirun") or MPIRUN)
SMALL = {"model.hidden": 16, "model.layers": 1, "model.embed": 8, "data.seq_len": 16,
         "data.batch_size": 8, "train.steps": 2, "output.progress": "false",
         "output.sample_bytes": 0}


def train(tmp: Path, data: Path, n: int = 2, **extra) -> subprocess.CompletedProcess:
    """`mpirun -n n python -m mpirnn.train` with a small model, killed after 60 s."""
    if not MPIRUN.exists():
        pytest.skip("no mpirun next to the Python interpreter or on PATH")
    values = {**SMALL, "data.path": data, "output.metrics": tmp / "m.jsonl", **extra}
    args = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    env = {k: v for k, v in os.environ.items() if k != "MPIRNN_TRACEBACK"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(MPIRUN), "-n", str(n), sys.executable, "-m", "mpirnn.train", *args],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=60)


def flip_one_value_byte(shard: Path) -> None:
    with h5py.File(shard, "r") as f:
        offset = f["data"].id.get_chunk_info(0).byte_offset + 100
    with open(shard, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_flipped_byte_stops_the_job_before_training(tmp_path):
    data = make_token_dataset(tmp_path / "tokens")
    flip_one_value_byte(data / "shard-00003.h5")   # rank 1's share (shards 1 and 3)
    result = train(tmp_path, data, **{"data.validate": "false"})
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 1, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    ours = [line for line in result.stderr.splitlines() if line.startswith("mpirnn:")]
    assert ours == ["mpirnn: error: shard-00003.h5: checksum (SHA-256) does not match "
                    "manifest.json: the file changed after prepare: re-run python -m mpirnn.data "
                    "prepare"], shown
    metrics = tmp_path / "m.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip(), "a step was trained"


def test_a_split_normalized_series_trains(tmp_path):
    data = make_series_dataset(tmp_path / "series", val_fraction=0.1)
    assert sorted(p.name for p in data.glob("val-*.h5")) == ["val-00000.h5"]
    result = train(tmp_path, data, **{"data.validate": "false"})
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if not r.get("summary")]
    # Normalized targets: a fresh model's mean squared error is of order 1, not of the data's scale.
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses), records


def _labelled_rows(tmp_path):
    import numpy as np

    from mpirnn.data.labelled_npy import prepare_labelled_npy

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((40, 20, 2)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(40) % 4)
    np.save(tmp_path / "l.npy", rng.integers(3, 21, 40))
    prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "rows", lengths=tmp_path / "l.npy")
    return tmp_path / "rows"


def test_a_labelled_dataset_trains_with_its_rows_lengths(tmp_path):
    result = train(tmp_path, _labelled_rows(tmp_path))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    steps = [r for r in records if not r.get("summary")]
    assert steps and all(0 <= r["padding_fraction"] < 1 for r in steps), records
    assert records[-1]["loss_unit"] == "nats per sequence", records[-1]
    # data.seq_len was set (16) but a labelled row is read whole: one note says so.
    assert "data.seq_len = 16 is not used" in result.stderr, result.stderr


def test_stateful_training_on_labelled_rows_is_refused_in_one_line(tmp_path):
    result = train(tmp_path, _labelled_rows(tmp_path), **{"train.stateful": "true"})
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout, shown
    ours = [line for line in result.stderr.splitlines() if line.startswith("mpirnn: error")]
    assert len(ours) == 1 and "train.stateful = true" in ours[0] and "labelled rows" in ours[0], shown
    metrics = tmp_path / "m.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip(), "a step was trained"
