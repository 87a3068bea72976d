"""`predict` and `evaluate` on labelled splits give the same predictions and metrics on every grid
of the world size, equal to each row predicted alone, unpadded, by the whole model (so a row
predicted inside a padded batch equals the row predicted alone: padding invariance).

    mpirun -n K python -m pytest -q --with-mpi -m mpi tests/mpi/test_predict.py   (K = 1, 2, 3, 4)

Each rank calls mpirnn.predict.main / mpirnn.evaluate.main in-process (as `mpirun python -m ...`
would) on datasets of every labelled task whose rows have different lengths, with checkpoints
written as the trainer writes them (float64, untrained: the numbers only have to agree). The val
splits (15 rows) leave a short last batch of 3 for batches of 6, so some data-parallel groups sit
one out.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from support import TEST_DEVICE, factorizations, grid_settings
from mpirnn import checkpoint, evaluate, predict
from mpirnn.config import load_config
from mpirnn.data.labelled_npy import prepare_labelled_npy
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.inference.model_info import ModelInfo
from mpirnn.inference.task_metrics import add_to_confusion, class_metrics
from mpirnn.models import build_model

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

world = MPI.COMM_WORLD
N, T, F = 60, 24, 3          # T = 24: every sp from 1 to 4 cuts it evenly
TASKS = ("classify", "tag", "regress")


def labels_for(task: str, rng, x) -> np.ndarray:
    if task == "classify":
        return np.arange(N) % 4
    if task == "tag":
        return (x[:, :, 0] > 0).astype(np.int64) + (x[:, :, 1] > 1)
    return np.stack([x[:, :, 1].sum(1) * 3 + 50, x[:, :, 2].mean(1) - 7], axis=1).astype(np.float64)


def write_model(root: Path, task: str) -> Path:
    manifest = load_manifest(root / task)
    info = ModelInfo.from_manifest(manifest)
    cfg = load_config(None, ["model.cell=lstm", "model.hidden=12", "model.layers=2", "model.embed=6",
                             'model.dtype="float64"', "data.batch_size=6", f"data.seq_len={T}",
                             f"data.path={root / task}", f"train.device={TEST_DEVICE}"])
    spec = manifest.task_spec
    model = build_model(cfg, features=F, outputs=spec.n_classes or spec.targets)
    state = {"format": 2, "step": 1, "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    checkpoint.save(root / f"ck-{task}", 1, state, cfg.to_dict(), {"dataset": info.to_json()})
    return root / f"ck-{task}"


@pytest.fixture(scope="module")
def shared_dir():
    path = tempfile.mkdtemp(prefix="mpirnn-predict-") if world.rank == 0 else None
    path = Path(world.bcast(path, root=0))
    if world.rank == 0:
        rng = np.random.default_rng(3)
        x = rng.standard_normal((N, T, F)).astype(np.float32)
        np.save(path / "x.npy", x)
        np.save(path / "l.npy", rng.integers(2, T + 1, N))
        for task in TASKS:
            np.save(path / f"y-{task}.npy", labels_for(task, rng, x))
            prepare_labelled_npy(path / "x.npy", path / f"y-{task}.npy", path / task, lengths=path / "l.npy",
                                 val_fraction=0.25)
            write_model(path, task)
        np.save(path / "y-three.npy", np.arange(N) % 3)   # classify with 3 classes, not the model's 4
        prepare_labelled_npy(path / "x.npy", path / "y-three.npy", path / "three", val_fraction=0.25)
    world.Barrier()
    yield path
    world.Barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


@torch.no_grad()
def serial_predictions(root: Path, task: str):
    """Each val row alone (its own length, no padding) through the whole model: (rows, steps, values)."""
    from mpirnn.inference.load import build, locate

    model, _, info = build(locate(root / f"ck-{task}"))
    manifest = load_manifest(root / task, split="val")
    reader = RowReader(manifest)
    rows, steps, values = [], [], []
    for row in range(manifest.length):
        length = int(reader.lengths[row])
        batch = reader.read(np.array([row]), 0, length, inputs=True, labels=False, dtype=torch.float64)
        state = model.zero_state(1, torch.empty(0, dtype=torch.float64), range(model.depth))
        outputs, _ = model.run_stack(model.input(batch.inputs), state)
        prediction = model.head(outputs[0]).double()
        if task == "tag":
            values.append(torch.softmax(prediction, -1).numpy())
            rows += [row] * length
            steps += list(range(length))
            continue
        last = prediction[length - 1]
        values.append((torch.softmax(last, -1) if task == "classify"
                       else info.task_spec.target_normalization.denormalize(last)).numpy()[None])
        rows.append(row)
    reader.close()
    return np.array(rows), np.array(steps), np.concatenate(values)


def grids() -> list[dict]:
    return [grid_settings(shape) for shape in factorizations(world.size, layers=2, hidden=12)]


def as_sets(grid: dict) -> list[str]:
    return [a for key, value in grid.items() for a in ("--set", f"{key}={value}")]


@pytest.mark.parametrize("task", TASKS)
def test_predictions_and_metrics_are_those_of_each_row_alone_on_every_grid(shared_dir, task):
    rows, steps, values = serial_predictions(shared_dir, task)
    manifest = load_manifest(shared_dir / task, split="val")
    truth = RowReader(manifest).all_labels()
    for grid in grids():
        name = "-".join(str(v) for v in grid.values())
        out = shared_dir / f"{task}-{name}-n{world.size}.h5"
        assert predict.main(["--checkpoint", str(shared_dir / f"ck-{task}"), "--out", str(out), *as_sets(grid)]) == 0
        evaluated = shared_dir / f"{task}-{name}-n{world.size}-evaluate.json"
        assert evaluate.main(["--checkpoint", str(shared_dir / f"ck-{task}"), "--out", str(evaluated),
                              *as_sets(grid)]) == 0
        world.Barrier()
        with h5py.File(out, "r") as f:   # every rank checks the file rank 0 wrote
            assert np.array_equal(f["row"][:], rows), grid
            if task == "tag":
                assert np.array_equal(f["step"][:], steps), grid
            got = f["probabilities"][:] if task != "regress" else f["predicted"][:]
            np.testing.assert_allclose(got, values, rtol=0, atol=1e-10, err_msg=str(grid))
        metrics = json.loads(out.with_suffix(".json").read_text())
        assert metrics == {**json.loads(evaluated.read_text()), "predictions": str(out)}, grid
        if task == "regress":
            expected = values - truth   # the labels on disk are in data units
            assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean(expected ** 2))), abs=1e-9), grid
            assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(expected))), abs=1e-9), grid
        else:
            confusion = np.zeros((len(manifest.classes),) * 2, dtype=np.int64)
            labels = truth[rows, steps] if task == "tag" else truth[rows]
            add_to_confusion(confusion, labels, values.argmax(1))
            expected = class_metrics(confusion, manifest.classes)
            assert metrics["confusion"] == expected["confusion"], grid
            assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-15), grid
            assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-15), grid


@pytest.mark.parametrize("data, words", [("three", "predicts 4 classes (0, 1, 2, 3) but"),
                                         ("tag", "holds a model of task 'classify' but")])
def test_a_dataset_of_other_classes_or_task_is_refused_with_exit_2(shared_dir, capsys, data, words):
    """One line (rank 0), status 2 on every rank, nothing written."""
    from mpirnn.distributed.launch import run_guarded

    out = shared_dir / f"refused-{data}-n{world.size}.csv"
    status = run_guarded(predict.main, ["--checkpoint", str(shared_dir / "ck-classify"), "--data",
                                        str(shared_dir / data), "--out", str(out)])
    assert status == 2 and not out.exists() and not out.with_suffix(".json").exists()
    if world.rank == 0:
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("mpirnn: error: ") and words in lines[0], lines
