"""Held-out evaluation on every grid equals a plain serial computation; the new optimizer and
schedule settings match the serial reference and resume bit for bit.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_evaluation.py   (K = 1, 2, 3, 4)

Each rank calls mpirnn.train.main / mpirnn.evaluate.main in-process (as `mpirun python -m ...`
would) on real sharded datasets with a val split whose sequences do not fill the last batch,
so short last batches (some data-parallel groups without rows) are exercised too.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from mpi4py import MPI

from support import TEST_DEVICE, factorizations, grid_settings, make_series_dataset, make_token_dataset
from mpirnn import evaluate, load_checkpoint
from mpirnn.config import load_config
from mpirnn.data.manifest import load_manifest
from mpirnn.data.reader import Reader
from mpirnn.reference import serial_losses
from mpirnn.train import main as train
from mpirnn import faults

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

world = MPI.COMM_WORLD
# val: 2000 token steps -> 105 sequences of 19 = 17 batches of 6 and one of 3; series 600 -> 31 of 19.


@pytest.fixture(scope="module")
def shared_dir():
    path = tempfile.mkdtemp(prefix="mpirnn-eval-") if world.rank == 0 else None
    path = Path(world.bcast(path, root=0))
    if world.rank == 0:
        make_token_dataset(path / "tokens", val_fraction=0.1)
        make_series_dataset(path / "series", val_fraction=0.1)
    world.Barrier()
    yield path
    world.Barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def settings(path: Path, data: str, run: str, **extra) -> list[str]:
    values = {"model.hidden": 12, "model.layers": 2, "model.embed": 6, "model.dtype": '"float64"',
              "data.path": str(path / data), "data.seq_len": 19, "data.batch_size": 6,
              "train.steps": 6, "train.lr": 1e-2, "train.device": TEST_DEVICE, "train.eval_every": 3,
              "checkpoint.dir": str(path / run / "ckpt"), "output.metrics": str(path / run / "metrics.jsonl"),
              "output.progress": "false", "output.sample_bytes": 0, **extra}
    return [f"--set={key}={value}" for key, value in values.items()]


def records(path: Path, run: str) -> list[dict]:
    world.Barrier()
    return [json.loads(line) for line in (path / run / "metrics.jsonl").read_text().splitlines()]


def grids() -> list[dict]:
    """Every dp x sp x pp x tp = world size with pp <= 2 layers and tp dividing the 12 hidden units."""
    return [grid_settings(shape) for shape in factorizations(world.size, layers=2, hidden=12)]


@torch.no_grad()
def serial_val(model, data: Path, seq_len: int) -> tuple[float, list[float], list[float]]:
    """(mean loss, per-feature RMSE, MAE in data units) over every val sequence, one at a time, plainly."""
    manifest = load_manifest(data, split="val")
    reader = Reader(manifest)
    total, count, squares, absolute = 0.0, 0, None, None
    for window in range(reader.n_windows(seq_len)):
        block = reader.block([window], seq_len, 0, seq_len, dtype=torch.float64)
        inputs, targets = block[:, :-1], block[:, 1:]
        loss, _ = model(inputs, targets)
        total += float(loss)
        count += targets.numel()
        if model.features:
            out, _ = model.run_stack(model.input(inputs), model.zero_state(1, inputs))
            error = (model.head(out) - targets) * torch.tensor(manifest.normalization.scale, dtype=torch.float64)
            squares = error.square().sum((0, 1)) + (0 if squares is None else squares)
            absolute = error.abs().sum((0, 1)) + (0 if absolute is None else absolute)
    reader.close()
    if squares is None:
        return total / count, None, None
    steps = count / model.features
    return total / count, [math.sqrt(v / steps) for v in squares.tolist()], (absolute / steps).tolist()


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_val_loss_equals_serial_on_every_grid(shared_dir, cell):
    for index, grid in enumerate(grids()):
        run = f"val-{cell}-{index}"
        assert train(settings(shared_dir, "tokens", run, **{"model.cell": cell, **grid})) == 0
        lines = records(shared_dir, run)
        steps = [r for r in lines if not r.get("summary")]
        assert [r["step"] for r in steps if "val_loss" in r] == [3, 6], grid
        model, _ = load_checkpoint(shared_dir / run / "ckpt")           # the model after step 6
        expected, _, _ = serial_val(model.double(), shared_dir / "tokens", 19)
        assert steps[-1]["val_loss"] == pytest.approx(expected, rel=1e-10, abs=1e-12), f"rank {world.rank}, {grid}"
        summary = lines[-1]
        best = min((r["val_loss"], r["step"]) for r in steps if "val_loss" in r)
        assert (summary["best_val_loss"], summary["best_val_step"]) == best
        assert summary["loss_unit"] == "nats per token"
        assert summary["best_val_bits_per_byte"] == pytest.approx(best[0] / math.log(2))


def test_evaluate_series_rmse_equals_serial_on_every_grid(shared_dir):
    run = "series-eval"
    assert train(settings(shared_dir, "series", run, **{"model.cell": "gru", "train.eval_every": 0})) == 0
    model, _ = load_checkpoint(shared_dir / run / "ckpt")
    loss, rmse, mae = serial_val(model.double(), shared_dir / "series", 19)
    for index, grid in enumerate(grids()):
        out = shared_dir / run / f"eval-{index}.json"
        args = ["--checkpoint", str(shared_dir / run / "ckpt"), "--out", str(out), "--set", "model.dtype=float64",
                "--set", "data.batch_size=4", *[f"--set={k}={v}" for k, v in grid.items()]]
        assert evaluate.main(args) == 0
        world.Barrier()
        result = json.loads(out.read_text())
        assert result["loss"] == pytest.approx(loss, rel=1e-10), grid
        assert result["rmse_per_feature"] == pytest.approx(rmse, rel=1e-9), grid
        assert result["mae_per_feature"] == pytest.approx(mae, rel=1e-9), grid
        assert result["rmse"] == result["rmse_per_feature"][0] and result["elements"] == 31 * 19 * 3


OPTIMIZER = {"train.optimizer": "adamw", "train.weight_decay": 0.05, "train.schedule": "cosine",
             "train.warmup_steps": 3, "train.min_lr": 1e-3}


def test_optimizer_and_schedule_match_the_serial_reference(shared_dir):
    grid = max(grids(), key=lambda g: sum(v > 1 for v in g.values()))
    args = settings(shared_dir, "tokens", "adamw-serial", **{"model.cell": "lstm", "train.steps": 8,
                                                              "train.eval_every": 0, **OPTIMIZER, **grid})
    assert train(args) == 0
    lines = [r for r in records(shared_dir, "adamw-serial") if not r.get("summary")]
    cfg = load_config(None, [a.removeprefix("--set=") for a in args])
    cfg.train.device = "cpu"
    assert [r["loss"] for r in lines] == pytest.approx(serial_losses(cfg), rel=1e-10, abs=1e-12)
    assert lines[0]["lr"] == pytest.approx(1e-2 / 3) and lines[-1]["lr"] == pytest.approx(1e-3)


def test_schedule_and_best_checkpoint_resume_bit_for_bit(shared_dir, monkeypatch):
    grid = max(grids(), key=lambda g: sum(v > 1 for v in g.values()))
    common = {"model.cell": "lstm", "model.dtype": '"float32"', "train.steps": 10, "train.eval_every": 2,
              "checkpoint.keep": 1, **OPTIMIZER, **grid}
    assert train(settings(shared_dir, "tokens", "whole", **common)) == 0
    # The run dies at the start of step 7 on every rank (after its checkpoint at step 5): the cosine
    # decays over train.steps, so the interrupted run must be asked for the same 10 steps.
    part = settings(shared_dir, "tokens", "part", **{**common, "checkpoint.every": 5})
    monkeypatch.setattr(faults, "FAULT", ("raise", {"step": 7}))
    with pytest.raises(faults.InjectedFault):
        train(part)
    monkeypatch.setattr(faults, "FAULT", None)
    resumed = settings(shared_dir, "tokens", "part", **{**common, "checkpoint.resume": "true"})
    assert train(resumed) == 0
    whole, parted = records(shared_dir, "whole"), records(shared_dir, "part")
    fields = ("step", "loss", "lr", "val_loss", "grad_norm")
    expected = [[r.get(k) for k in fields] for r in whole if not r.get("summary")]
    got = [[r.get(k) for k in fields] for r in parted if not r.get("summary")]
    if TEST_DEVICE == "cpu":
        assert got == expected
    summary = parted[-1]
    assert (summary["best_val_loss"], summary["best_val_step"]) == (whole[-1]["best_val_loss"], whole[-1]["best_val_step"])
    # keep = 1: the newest checkpoint, and the best by val loss if it is another one.
    kept = sorted(int(p.stem[5:]) for p in (shared_dir / "part" / "ckpt").glob("ckpt-*.json"))
    assert kept == sorted({10, summary["best_val_step"]}), kept
