"""Bidirectional training runs through the real entry point: a checkpoint written on one grid holds
the reverse weights under their serial names, and a run resumed from it on every supported grid
of this world size (sequence parallelism included) continues with the losses of the uninterrupted run.
Pipelines run 2 microbatches, so their first stage runs one microbatch's reverse direction of
layer 1 with the weights the second stage lends it (mpirnn/parallel/plan.py `offload_reverse`).

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_bidirectional_runs.py   (K = 1, 2, 3, 4)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mpi4py import MPI

from support import factorizations, grid_settings, run_data_cli
from mpirnn.train import main

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

world = MPI.COMM_WORLD
HIDDEN = 12


@pytest.fixture(scope="module")
def tagged():
    """Rows of different lengths with one class per step (a tag dataset), prepared on rank 0."""
    path = tempfile.mkdtemp(prefix="mpirnn-bidir-") if world.rank == 0 else None
    path = Path(world.bcast(path, root=0))
    if world.rank == 0:
        g = np.random.default_rng(3)
        lengths = g.integers(3, 15, 48)
        np.save(path / "x.npy", g.normal(size=(48, 14, 3)))
        np.save(path / "y.npy", g.integers(0, 3, (48, 14)))
        np.save(path / "l.npy", lengths)
        done = run_data_cli("prepare", "--out", path / "data", "--npy", path / "x.npy", "--labels",
                            path / "y.npy", "--lengths", path / "l.npy")
        assert done.returncode == 0, done.stderr
    world.Barrier()
    yield path
    world.Barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def run(path: Path, name: str, **extra) -> list[float]:
    settings = {"model.cell": '"lstm"', "model.hidden": HIDDEN, "model.layers": 2, "model.embed": 5,
                "model.dtype": '"float64"', "model.bidirectional": "true", "data.path": str(path / "data"),
                "data.batch_size": 6, "train.steps": 6, "train.lr": 1e-2, "train.device": "cpu",
                "train.eval_every": 0, "output.metrics": str(path / name / "metrics.jsonl"),
                "output.progress": "false", "output.sample_bytes": 0, **extra}
    assert main([f"--set={key}={value}" for key, value in settings.items()]) == 0
    world.Barrier()
    lines = (path / name / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if not r.get("summary")]


def settings_of(shape) -> dict:
    """A grid's settings; pipelines get 2 microbatches (the performance model picks 1 for these
    6 rows), so that stage 0 runs one of them's reverse direction of layer 1 (plan.offloaded)."""
    return {**grid_settings(shape), **({"parallel.microbatches": 2} if shape[2] > 1 else {})}


def test_checkpoint_resumes_on_every_supported_grid(tagged):
    grids = [settings_of(g) for g in factorizations(world.size, 2, HIDDEN)]
    written = max(grids, key=lambda g: sum(v > 1 for v in g.values()))
    expected = run(tagged, "whole", **written)
    for index, grid in enumerate(grids):
        ckpt = tagged / f"ckpt-{index}"
        run(tagged, f"part-{index}", **written, **{"train.steps": 3, "checkpoint.dir": str(ckpt)})
        if world.rank == 0:
            saved = torch.load(sorted(ckpt.rglob("ckpt-*.pt"))[-1], weights_only=False)
            assert saved["model"]["layers.1.weight_hh_l0_reverse"].shape == (4 * HIDDEN, HIDDEN)
        got = run(tagged, f"part-{index}", **grid, **{"checkpoint.dir": str(ckpt), "checkpoint.resume": "true"})
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), f"rank {world.rank}: {written} -> {grid}"


@pytest.mark.parametrize("cell", ["gru", "minlstm"])
def test_dropout_and_validation_are_the_same_on_every_grid(tagged, cell):
    # Dropout masks keyed on global rows and steps: the two opposite wavefronts of sp draw the serial ones too.
    settings = {"model.cell": f'"{cell}"', "model.dropout": 0.3, "train.steps": 4, "train.eval_every": 2}
    grids = [settings_of(g) for g in factorizations(world.size, 2, HIDDEN)]
    expected = run(tagged, f"dropout-{cell}", **grids[0], **settings)
    for index, grid in enumerate(grids[1:]):
        got = run(tagged, f"dropout-{cell}-{index}", **grid, **settings)
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), f"rank {world.rank}: {grid}"
