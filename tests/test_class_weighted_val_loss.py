"""train.class_weights weights the training loss only: `val_loss` during training and
`evaluate`'s `loss` are the plain mean cross-entropy, `val_loss_weighted` and `loss_weighted`
the class-weighted one, and a run at 2 ranks reports what `evaluate` at 1 rank computes from its
checkpoint (docs/tasks.md, "Class weights"). Every grid: tests/mpi/test_class_weighted_loss.py.

    python -m pytest -q tests/test_class_weighted_val_loss.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import train_under_mpirun

from mpirnn import evaluate
from mpirnn.data.labelled_npy import prepare_labelled_npy
from mpirnn.data.labelled_targets import balanced_weights

pytestmark = pytest.mark.timeout(300)


def test_val_loss_is_plain_and_weighted_beside_it_as_evaluate_reports(tmp_path):
    rng = np.random.default_rng(4)
    y = rng.choice(3, 60, p=[0.65, 0.25, 0.1])
    x = rng.standard_normal((60, 10, 2)).astype(np.float32)
    x[:, :, 0] += y[:, None] * 0.7
    for name, array in (("x", x), ("y", y), ("l", rng.integers(3, 11, 60))):
        np.save(tmp_path / f"{name}.npy", array)
    prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "rows", lengths=tmp_path / "l.npy",
                         val_fraction=0.3)
    settings = {"data.path": tmp_path / "rows", "train.steps": 6, "train.eval_every": 6, "model.hidden": 8,
                "model.embed": 4, "model.dtype": '"float64"', "train.class_weights": '"balanced"',
                "parallel.dp": 2, "checkpoint.dir": tmp_path / "ck", "output.metrics": tmp_path / "m.jsonl",
                "output.progress": "false"}
    done = train_under_mpirun(2, settings, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    last = [r for r in records if "val_loss" in r][-1]
    meta = json.loads((tmp_path / "ck" / "ckpt-00000006.json").read_text())
    train_counts = np.bincount(y[np.isin(np.arange(60), train_rows(tmp_path / "rows"))], minlength=3)
    assert meta["class_weights"] == pytest.approx(list(balanced_weights(train_counts)), rel=1e-12)

    assert evaluate.main(["--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-9)
    assert result["loss_weighted"] == pytest.approx(last["val_loss_weighted"], rel=1e-9)
    assert abs(result["loss"] - result["loss_weighted"]) > 1e-4   # weighting changes the mean here
    assert meta["val_loss"] == last["val_loss"] and meta["val_loss_weighted"] == last["val_loss_weighted"]


def train_rows(dataset) -> np.ndarray:
    """The input rows of a dataset's train split (`input_row` of its shards)."""
    import h5py

    from mpirnn.data.manifest import load_manifest

    manifest = load_manifest(dataset)
    rows = []
    for i in range(len(manifest.shards)):
        with h5py.File(manifest.shard_path(i), "r") as f:
            rows.append(f["input_row"][...])
    return np.concatenate(rows)
