"""Whole training runs through the real entry point match the serial run step by step.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_training_runs.py   (K = 1, 2, 3, 4)

Each rank calls mpirnn.train.main in-process (as `mpirun python -m mpirnn.train` would),
on a real sharded HDF5 dataset that rank 0 prepares in a shared temporary directory;
every rank then compares the metrics file with the serial reference computed locally.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from mpi4py import MPI

from support import TEST_DEVICE, factorizations, grid_settings, make_series_dataset, make_token_dataset
from mpirnn.config import load_config
from mpirnn.reference import serial_losses
from mpirnn.train import main

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

world = MPI.COMM_WORLD


@pytest.fixture(scope="module")
def shared_dir():
    path = tempfile.mkdtemp(prefix="mpirnn-test-") if world.rank == 0 else None
    path = Path(world.bcast(path, root=0))
    if world.rank == 0:
        make_token_dataset(path / "tokens")
        make_series_dataset(path / "series")
        make_labelled_rows(path / "labelled")
    world.Barrier()
    yield path
    world.Barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def small_run(path: Path, data: str, run: str, **extra) -> list[str]:
    settings = {"model.hidden": HIDDEN, "model.layers": 2, "model.embed": 6, "model.dtype": '"float64"',
                "data.path": str(path / data), "data.seq_len": 19, "data.batch_size": 6,
                "train.steps": 20, "train.lr": 1e-2, "train.device": TEST_DEVICE,
                "output.metrics": str(path / run / "metrics.jsonl"), "output.progress": "false",
                "output.sample_bytes": 0, **extra}
    return [f"--set={key}={value}" for key, value in settings.items()]


def losses(path: Path, run: str) -> list[float]:
    world.Barrier()
    lines = (path / run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if not r.get("summary")]


def reference(args: list[str]) -> list[float]:
    cfg = load_config(None, [a.removeprefix("--set=") for a in args])
    cfg.train.device = "cpu"
    return serial_losses(cfg)


HIDDEN = 12  # divisible by tp = 2, 3, 4


def grids(layers: int = 2) -> list[dict]:
    """Every dp x sp x pp x tp = world size with pp <= layers and tp dividing the hidden size
    (the whole matrix of valid factorizations, not a hand-picked list)."""
    return [grid_settings(shape) for shape in factorizations(world.size, layers, HIDDEN)]


def most_composed(*prefer: str) -> dict:
    """The grid using the most axes (e.g. pp x sp at -n 4), where composition bugs would show;
    among those, the one using the `prefer`red axes."""
    return max(grids(), key=lambda g: (sum(v > 1 for v in g.values()),
                                       sum(g[f"parallel.{a}"] > 1 for a in prefer), g["parallel.pp"]))


def records(path: Path, run: str) -> list[dict]:
    world.Barrier()
    lines = (path / run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if not r.get("summary")]


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_twenty_steps_match_serial(shared_dir, cell):
    for index, grid in enumerate(grids()):
        run = f"traj-{cell}-{index}"
        args = small_run(shared_dir, "tokens", run, **{"model.cell": cell, **grid})
        assert main(args) == 0
        got, expected = losses(shared_dir, run), reference(args)
        assert len(got) == 20
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), f"rank {world.rank}, grid {grid}"
        assert got[-1] < got[0] - 0.1, "training should reduce the loss"
        # Every field describes its own step: the MPI wait is part of the step's time, and it is
        # the waits on neighbours' messages plus the time in collectives. Only sp and pp have
        # neighbours (rank 0 writes the metrics; with sp or pp it is the first in both chains and
        # waits for the gradients coming back); linear cells join sp segments by a collective scan.
        lines = records(shared_dir, run)
        assert all(r["comm_time_s"] <= r["step_time_s"] for r in lines), grid
        assert all(r["comm_wait_s"] + r["comm_collective_s"] == pytest.approx(r["comm_time_s"]) for r in lines)
        chained = grid["parallel.pp"] > 1 or (grid["parallel.sp"] > 1 and cell == "lstm")
        neighbours = [r["comm_wait_s"] for r in lines]
        assert (max(neighbours) > 0) == chained, (grid, neighbours)
        # Collectives: gradient sums over replicas (dp x sp ranks share parameters), tp's exchanges.
        shared = grid["parallel.dp"] * grid["parallel.sp"] * grid["parallel.tp"] > 1
        collectives = [r["comm_collective_s"] for r in lines]
        assert (max(collectives) > 0) == shared, (grid, collectives)


def make_labelled_rows(out: Path) -> None:
    """60 rows of up to 19 steps, lengths 1-19, 3 classes per sequence decided by the last valid step."""
    import numpy as np

    from mpirnn.data.labelled_npy import prepare_labelled_npy

    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 19, 2)).astype(np.float32)
    lengths = rng.integers(1, 20, 60)
    y = np.digitize(x[np.arange(60), lengths - 1, 0], [-0.5, 0.5])
    for name, array in (("x", x), ("y", y), ("l", lengths)):
        np.save(out.parent / f"{name}.npy", array)
    prepare_labelled_npy(out.parent / "x.npy", out.parent / "y.npy", out, lengths=out.parent / "l.npy",
                         val_fraction=0.0)


@pytest.mark.parametrize("cell", ["lstm", "minlstm"])
def test_labelled_rows_of_different_lengths_match_serial(shared_dir, cell):
    # Every grid, with the defaults of labelled rows (bucketing; each step's segments cut by its
    # longest row, Plan.for_length), balanced class weights and dropout between the layers.
    for index, grid in enumerate(grids()):
        run = f"labelled-{cell}-{index}"
        args = small_run(shared_dir, "labelled", run, **{"model.cell": cell, "train.steps": 8, "model.dropout": 0.3,
                                                         "train.class_weights": '"balanced"', **grid})
        assert main(args) == 0
        got = records(shared_dir, run)
        assert [r["loss"] for r in got] == pytest.approx(reference(args), rel=1e-10, abs=1e-12), f"{grid}"
        assert all(0 <= r["padding_fraction"] < 0.5 for r in got), got


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mingru", "minlstm"])
def test_ten_steps_with_tensor_parallelism_match_serial(shared_dir, cell):
    # tp x pp at -n 4 (tp alone at -n 2 and 3): the wide model, not K narrow ones, every step.
    grid = most_composed("tp")
    run = f"tp-{cell}"
    args = small_run(shared_dir, "tokens", run, **{"model.cell": cell, "train.steps": 10, **grid})
    assert main(args) == 0
    assert losses(shared_dir, run) == pytest.approx(reference(args), rel=1e-10, abs=1e-12), f"{grid}"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mingru", "minlstm"])
def test_stateful_series_matches_serial(shared_dir, cell):
    grid = most_composed()
    run = f"stateful-{cell}"
    args = small_run(shared_dir, "series", run, **{"model.cell": cell, "train.stateful": "true",
                                                   "train.steps": 3, **grid})
    assert main(args) == 0
    assert losses(shared_dir, run) == pytest.approx(reference(args), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("stateful", ["false", "true"])
def test_resume_reproduces_uninterrupted_run(shared_dir, stateful):
    grid = most_composed()
    whole, part = f"whole-{stateful}", f"part-{stateful}"
    common = {"model.cell": "lstm", "train.stateful": stateful, "model.dtype": '"float32"', **grid}
    assert main(small_run(shared_dir, "tokens", whole, **{"train.steps": 10, **common})) == 0
    checkpoints = shared_dir / f"ckpt-{stateful}"
    stopped = small_run(shared_dir, "tokens", part, **{"train.steps": 6, "checkpoint.dir": str(checkpoints),
                                                       "checkpoint.every": 3, **common})
    assert main(stopped) == 0
    resumed = small_run(shared_dir, "tokens", part, **{"train.steps": 10, "checkpoint.dir": str(checkpoints),
                                                       "checkpoint.resume": "true", **common})
    assert main(resumed) == 0
    # Bitwise on the CPU: model, optimizer, carried states and data position are all restored.
    expected = losses(shared_dir, whole)
    got = losses(shared_dir, part)
    if TEST_DEVICE == "cpu":
        assert got == expected
    else:
        assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("stateful, prefer", [("false", "sp"), ("true", "sp"), ("true", "tp")])
def test_checkpoint_resumes_on_every_other_grid(shared_dir, stateful, prefer):
    # Written on a composed grid (pp=2 x sp=2, pp=2 x tp=2 at -n 4), resumed on every grid of this
    # world size: checkpoints hold the serial model under serial names, so the losses continue exactly.
    written = most_composed(prefer)
    common = {"model.cell": "gru", "train.stateful": stateful, "train.steps": 8}
    whole = f"grids-whole-{stateful}-{prefer}"
    assert main(small_run(shared_dir, "series", whole, **{**common, **written})) == 0
    expected = losses(shared_dir, whole)
    for index, grid in enumerate(grids()):
        run, ckpt = f"grids-{stateful}-{prefer}-{index}", shared_dir / f"ckpt-grids-{stateful}-{prefer}-{index}"
        assert main(small_run(shared_dir, "series", run, **{**common, **written, "train.steps": 4,
                                                             "checkpoint.dir": str(ckpt)})) == 0
        assert main(small_run(shared_dir, "series", run, **{**common, **grid, "checkpoint.dir": str(ckpt),
                                                             "checkpoint.resume": "true"})) == 0
        got = losses(shared_dir, run)
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), f"rank {world.rank}: {written} -> {grid}"
