"""`python -m mpirnn.predict` through the real launcher on a labelled dataset trained with the
trainer's defaults: the files it writes, the same predictions at 1 and 2 ranks, its refusals.

    python -m pytest -q tests/test_inference_predict_command.py
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpirnn.data.labelled_npy import prepare_labelled_npy

pytestmark = pytest.mark.timeout(300)

MPIRUN = Path(sys.executable).parent / "mpirun"


def run(n: int, module: str, *args, timeout: int = 200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MPIRNN_TRACEBACK"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(MPIRUN), "-n", str(n), sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three classes told apart by the first feature's level; only the run's length, paths and val
    schedule are set (every other setting is the trainer's default)."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    y = np.array(["walk", "run", "sit"])[np.arange(48) % 3]
    x = rng.standard_normal((48, 20, 2)).astype(np.float32)
    x[:, :, 0] += (np.arange(48) % 3)[:, None] * 1.5
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    np.save(root / "l.npy", rng.integers(4, 21, 48))
    prepare_labelled_npy(root / "x.npy", root / "y.npy", root / "rows", lengths=root / "l.npy", val_fraction=0.25)
    settings = {"data.path": root / "rows", "train.steps": 12, "train.eval_every": 6,
                "checkpoint.dir": root / "ck", "checkpoint.best_metric": "val_accuracy",
                "output.metrics": root / "m.jsonl", "output.progress": "false"}
    done = run(1, "mpirnn.train", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")])
    assert done.returncode == 0, done.stderr
    return root


def test_predict_writes_the_predictions_metrics_and_plot(trained):
    out = trained / "p.csv"
    done = run(1, "mpirnn.predict", "--checkpoint", trained / "ck", "--best", "--out", out, "--plot", trained / "c.png")
    assert done.returncode == 0, done.stderr
    lines = list(csv.DictReader(out.open()))
    assert [int(line["row"]) for line in lines] == list(range(12))   # the val split, in its order
    assert list(lines[0]) == ["row", "predicted", "probability", "p_walk", "p_run", "p_sit", "label"]
    for line in lines:
        assert float(line["probability"]) == max(float(line[f"p_{c}"]) for c in ("walk", "run", "sit"))
        assert abs(sum(float(line[f"p_{c}"]) for c in ("walk", "run", "sit")) - 1) < 1e-9
    metrics = json.loads((trained / "p.json").read_text())
    assert metrics["classes"] == ["walk", "run", "sit"] and sum(map(sum, metrics["confusion"])) == 12
    agree = sum(line["predicted"] == line["label"] for line in lines) / 12
    assert metrics["accuracy"] == pytest.approx(agree)
    assert (trained / "c.png").read_bytes()[:4] == b"\x89PNG"
    # --best took the checkpoint with the highest val_accuracy the run recorded (checkpoint.best_metric).
    records = [json.loads(line) for line in (trained / "m.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "val_accuracy" in r]
    assert evaluated and all("val_macro_f1" in r for r in evaluated)
    best = max(evaluated, key=lambda r: (r["val_accuracy"], -r["step"]))
    assert metrics["step"] == best["step"] and metrics["accuracy"] == pytest.approx(best["val_accuracy"])
    # Two ranks cutting the time of every row: the same predictions (float32: up to rounding).
    two = trained / "p2.csv"
    done = run(2, "mpirnn.predict", "--checkpoint", trained / "ck", "--best", "--out", two, "--set", "parallel.sp=2")
    assert done.returncode == 0, done.stderr
    other = list(csv.DictReader(two.open()))
    assert [line["predicted"] for line in other] == [line["predicted"] for line in lines]
    assert np.allclose([float(line["p_walk"]) for line in other], [float(line["p_walk"]) for line in lines],
                       atol=1e-5)


def test_predict_refuses_before_writing_anything(trained):
    for args, words in ((["--out", trained / "p.txt"], "name a .csv or .h5 file"),
                        (["--out", trained / "q.csv", "--plot", trained / "c.gif"], "--plot"),
                        (["--out", trained / "q.csv", "--set", "model.hidden=3"], "--set model.hidden")):
        done = run(1, "mpirnn.predict", "--checkpoint", trained / "ck", *args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(lines) == 1 and words in lines[0], done.stderr
        assert not (trained / "q.csv").exists() and not (trained / "q.json").exists()


def test_a_best_metric_of_classes_is_refused_for_regression_before_compute(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.standard_normal((40, 10, 2)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.standard_normal(40))
    prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "reg", val_fraction=0.25)
    done = run(1, "mpirnn.train", "--set", f"data.path={tmp_path / 'reg'}", "--set", "data.batch_size=8",
               "--set", "checkpoint.best_metric=val_macro_f1", "--set", f"output.metrics={tmp_path / 'm.jsonl'}")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "checkpoint.best_metric = 'val_macro_f1' needs a task with classes" in lines[0]
    assert not (tmp_path / "m.jsonl").exists()
