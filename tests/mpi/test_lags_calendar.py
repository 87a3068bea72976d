"""Seasonal lags and calendar features train exactly on every grid: each rank reads its own rows and
segment (plus the steps its lags reach back), and the losses equal the serial run's at float64.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_lags_calendar.py   (K = 1, 2, 3, 4)
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
    def prepare(path):   # hourly: hour, weekday and year calendar (6 features) beside 2 values
        make_dated_series(path / "hourly", length=500, frequency="hourly", val_fraction=0.1, shard_size=90)
    yield from shared_temp_dir(world, prepare)


def losses(path: Path, run: str) -> list[float]:
    return [r["loss"] for r in metric_records(world, path / run / "metrics.jsonl")]


@pytest.mark.parametrize("cell, windows", [("gru", "every"), ("mingru", "cut")])
def test_every_grid_matches_serial(shared_dir, cell, windows):
    for index, grid in enumerate(grid_settings(g) for g in factorizations(world.size, 2, HIDDEN)):
        run = f"{cell}-{index}"
        # Lags 24 and 5 reach 23 steps before a window: segments of later ranks read into earlier ones' steps.
        settings = {"model.cell": f'"{cell}"', "model.hidden": HIDDEN, "model.layers": 2, "model.embed": 6,
                    "model.dtype": '"float64"', "data.path": f'"{shared_dir / "hourly"}"', "data.seq_len": 17,
                    "data.batch_size": 6, "data.windows": f'"{windows}"', "data.lags": "[24, 5]",
                    "train.steps": 6, "train.lr": 1e-2, "train.device": TEST_DEVICE, "train.eval_every": 3,
                    "output.metrics": f'"{shared_dir / run / "metrics.jsonl"}"', "output.progress": "false",
                    "output.sample_bytes": 0, **grid}
        args = [f"--set={key}={value}" for key, value in settings.items()]
        assert main(args) == 0
        cfg = load_config(None, [a.removeprefix("--set=") for a in args])
        cfg.train.device = "cpu"
        assert losses(shared_dir, run) == pytest.approx(serial_losses(cfg), rel=1e-10, abs=1e-12), \
            f"rank {world.rank}, grid {grid}"
