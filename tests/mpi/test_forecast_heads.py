"""Quantile and multi-step heads train exactly on every grid through the real loader: each rank
reads its rows, its segment's inputs and the targets up to train.horizon - 1 steps past its
segment (mpirnn/data/horizon.py), and the losses and val losses equal the serial run's at float64.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_forecast_heads.py   (K = 1, 2, 3, 4)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi4py import MPI

from support import TEST_DEVICE, factorizations, grid_settings, make_dated_series, metric_records, shared_temp_dir
from mpirnn.config import load_config
from mpirnn.reference import serial_losses
from mpirnn.train import main

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

world = MPI.COMM_WORLD
HIDDEN = 12  # divisible by tp = 2, 3, 4


@pytest.fixture(scope="module")
def shared_dir():
    def prepare(path):   # shards of 70 steps: a window's targets ahead cross shard files
        make_dated_series(path / "daily", length=400, frequency="daily", val_fraction=0.2, shard_size=70)
    yield from shared_temp_dir(world, prepare)


def records(path: Path, run: str) -> list[dict]:
    return metric_records(world, path / run / "metrics.jsonl")


@pytest.mark.parametrize("cell, head", [("lstm", {"train.loss": '"quantile"', "train.horizon": 5}),
                                        ("mingru", {"train.horizon": 5}),
                                        ("gru", {"train.loss": '"quantile"', "train.quantiles": "[0.25, 0.75]"})])
def test_every_grid_matches_serial(shared_dir, cell, head):
    for index, grid in enumerate(grid_settings(g) for g in factorizations(world.size, 2, HIDDEN)):
        run = f"{cell}-{index}"
        # seq_len 17 with horizon 5: at sp = 2-4 every segment reads targets in the next one's steps.
        settings = {"model.cell": f'"{cell}"', "model.hidden": HIDDEN, "model.layers": 2, "model.embed": 6,
                    "model.dtype": '"float64"', "data.path": f'"{shared_dir / "daily"}"', "data.seq_len": 17,
                    "data.batch_size": 6, "data.windows": '"every"', "train.steps": 5, "train.lr": 1e-2,
                    "train.device": TEST_DEVICE, "train.eval_every": 5, **head,
                    "output.metrics": f'"{shared_dir / run / "metrics.jsonl"}"', "output.progress": "false",
                    "output.sample_bytes": 0, **grid}
        args = [f"--set={key}={value}" for key, value in settings.items()]
        assert main(args) == 0
        cfg = load_config(None, [a.removeprefix("--set=") for a in args])
        cfg.train.device = "cpu"
        got = records(shared_dir, run)
        assert [r["loss"] for r in got] == pytest.approx(serial_losses(cfg), rel=1e-10, abs=1e-12), \
            f"rank {world.rank}, grid {grid}"
        if index == 0:
            first_val = got[-1]["val_loss"]
        # The val loss (the same objective over the val split's cuts) is the same on every grid.
        assert got[-1]["val_loss"] == pytest.approx(first_val, rel=1e-10), f"rank {world.rank}, grid {grid}"
