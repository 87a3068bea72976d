"""With train.class_weights, `evaluate`'s `loss` is the plain mean cross-entropy and
`loss_weighted` the class-weighted one that training minimizes, the same on every grid of the
world size (docs/tasks.md, "Class weights").

    mpirun -n K python -m pytest -q --with-mpi -m mpi tests/mpi/test_class_weighted_loss.py   (K = 1, 2, 3, 4)

Rows of different lengths with unbalanced classes, float64 checkpoints written as the trainer
writes them (with the resolved weights in their JSON), and both losses computed here from each
val row alone, unpadded, through the whole serial model.
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
from torch.nn import functional as F

from support import TEST_DEVICE, factorizations, grid_settings
from mpirnn import checkpoint, evaluate
from mpirnn.config import load_config
from mpirnn.data.labelled_npy import prepare_labelled_npy
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.inference.model_info import ModelInfo
from mpirnn.models import build_model

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

world = MPI.COMM_WORLD
N, T, FEATURES = 48, 12, 3       # T = 12: every sp from 1 to 4 cuts it evenly
WEIGHTS = [0.5, 2.0, 6.0]        # class 2 is rare: weighting changes the mean a lot
TASKS = ("classify", "tag")


@pytest.fixture(scope="module")
def shared_dir():
    path = tempfile.mkdtemp(prefix="mpirnn-weighted-") if world.rank == 0 else None
    path = Path(world.bcast(path, root=0))
    if world.rank == 0:
        rng = np.random.default_rng(11)
        x = rng.standard_normal((N, T, FEATURES)).astype(np.float32)
        np.save(path / "x.npy", x)
        np.save(path / "l.npy", rng.integers(2, T + 1, N))
        # Unbalanced classes: about 60%, 30% and 10%.
        np.save(path / "y-classify.npy", rng.choice(3, N, p=[0.6, 0.3, 0.1]))
        np.save(path / "y-tag.npy", rng.choice(3, (N, T), p=[0.6, 0.3, 0.1]))
        for task in TASKS:
            prepare_labelled_npy(path / "x.npy", path / f"y-{task}.npy", path / task, lengths=path / "l.npy",
                                 val_fraction=0.25)
            write_checkpoint(path, task)
    world.Barrier()
    yield path
    world.Barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def write_checkpoint(root: Path, task: str) -> None:
    manifest = load_manifest(root / task)
    cfg = load_config(None, ["model.cell=gru", "model.hidden=12", "model.layers=2", "model.embed=6",
                             'model.dtype="float64"', "data.batch_size=5", f"data.path={root / task}",
                             f"train.class_weights={WEIGHTS}", f"train.device={TEST_DEVICE}"])
    model = build_model(cfg, features=FEATURES, outputs=3)
    state = {"format": 2, "step": 1, "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    checkpoint.save(root / f"ck-{task}", 1, state, cfg.to_dict(),
                    {"dataset": ModelInfo.from_manifest(manifest).to_json(), "class_weights": WEIGHTS})


@torch.no_grad()
def serial_losses(root: Path, task: str) -> tuple[float, float]:
    """(mean cross-entropy, class-weighted mean cross-entropy) of the val split, each row alone."""
    from mpirnn.inference.load import build, locate

    model = build(locate(root / f"ck-{task}"))[0]
    reader = RowReader(load_manifest(root / task, split="val"))
    logits, labels = [], []
    for row in range(len(reader.lengths)):
        length = int(reader.lengths[row])
        batch = reader.read(np.array([row]), 0, length, dtype=torch.float64)
        state = model.zero_state(1, torch.empty(0, dtype=torch.float64))
        outputs, _ = model.run_stack(model.input(batch.inputs), state)
        prediction = model.head(outputs[0])
        logits.append(prediction if task == "tag" else prediction[-1:])
        labels.append(batch.labels[0] if task == "tag" else batch.labels)
    reader.close()
    logits, labels = torch.cat(logits), torch.cat(labels)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    return F.cross_entropy(logits, labels).item(), F.cross_entropy(logits, labels, weight=weights).item()


@pytest.mark.parametrize("task", TASKS)
def test_loss_is_unweighted_and_loss_weighted_is_trainings_on_every_grid(shared_dir, task):
    plain, weighted = serial_losses(shared_dir, task)
    assert abs(plain - weighted) > 1e-3   # the two measures differ here: the test can tell them apart
    for shape in factorizations(world.size, layers=2, hidden=12):
        grid = grid_settings(shape)
        out = shared_dir / f"{task}-{'-'.join(map(str, shape))}-n{world.size}.json"
        sets = [a for key, value in grid.items() for a in ("--set", f"{key}={value}")]
        assert evaluate.main(["--checkpoint", str(shared_dir / f"ck-{task}"), "--out", str(out), *sets]) == 0
        world.Barrier()
        result = json.loads(out.read_text())
        assert result["loss"] == pytest.approx(plain, abs=1e-10), grid
        assert result["loss_weighted"] == pytest.approx(weighted, abs=1e-10), grid
        assert result["class_weights"] == WEIGHTS
