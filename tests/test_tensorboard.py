"""output.tensorboard = true: event files that hold what metrics.jsonl holds (mpirnn/training/tensorboard.py).

    cd /work/main && .venv/bin/python -m pytest -q tests/test_tensorboard.py

A real 2-rank run through mpirun writes the events; they are read back with TensorBoard's own
reader and every scalar's steps and values are compared with the metrics file's lines.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from support import make_token_dataset, train_under_mpirun

from mpirnn.config import load_config
from mpirnn.errors import ConfigError
from mpirnn.training.tensorboard import check_installed, scalars

pytest.importorskip("tensorboard", reason="pip install 'mpirnn[tensorboard]'")

# Makes `tensorboard` look uninstalled to the trainer, as a sitecustomize on PYTHONPATH (a None
# entry in sys.modules: find_spec answers None, import raises ModuleNotFoundError).
HIDE = "import sys\nsys.modules['tensorboard'] = None\n"


def test_a_record_becomes_its_numbers_and_communication_shares():
    record = {"step": 3, "loss": 2.5, "step_time_s": 0.5, "tokens_per_s": 100, "comm_time_s": 0.1,
              "comm_wait_s": 0.05, "comm_collective_s": 0.05, "grad_norm": 1.0, "lr": 0.01, "skipped": True}
    got = scalars(record)
    assert got["comm_time_share"] == pytest.approx(0.2) and got["comm_wait_share"] == pytest.approx(0.1)
    assert got["loss"] == 2.5 and got["tokens_per_s"] == 100.0 and "skipped" not in got and "step" not in got
    assert scalars({"summary": True, "steps": 3, "final_loss": 1.0}) == {}


def test_refused_before_training_when_the_package_is_missing(tmp_path, monkeypatch):
    import importlib.util

    cfg = load_config(None, ["output.tensorboard=true"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'mpirnn\[tensorboard\]'"):
        check_installed(cfg)
    check_installed(load_config(None, []))  # off: nothing needed
    monkeypatch.undo()
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hide")}
    done = subprocess.run([sys.executable, "-m", "mpirnn.train", "--set", "output.tensorboard=true"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "output.tensorboard = true needs the tensorboard package" in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing started


@pytest.mark.timeout(240)
def test_events_hold_the_metrics_of_a_two_rank_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_token_dataset(tmp_path / "tokens", val_fraction=0.2)
    settings = {"model.cell": "gru", "model.hidden": 8, "model.layers": 2, "model.embed": 4, "data.path": str(data),
                "data.seq_len": 12, "data.batch_size": 4, "train.steps": 4, "train.eval_every": 2,
                "train.eval_batches": 1, "parallel.pp": 2, "parallel.dp": 1, "train.device": "cpu",
                "output.progress": "false", "output.sample_bytes": 0, "output.run_name": "board",
                "output.tensorboard": "true"}
    done = train_under_mpirun(2, settings, tmp_path, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "board"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if not r.get("summary")]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["step"] for r in steps if "val_loss" in r] == [2, 4]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {}
    for record in steps:
        for tag, value in scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert {"loss", "val_loss", "lr", "tokens_per_s", "grad_norm", "comm_time_share", "comm_wait_share",
            "comm_collective_share"} <= tags == set(expected)
    for tag, pairs in expected.items():
        written = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in written] == [s for s, _ in pairs], tag
        for (_, got), (_, want) in zip(written, pairs):  # events hold float32
            assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12), (tag, got, want)


def test_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path, monkeypatch):
    """As metrics.jsonl drops the lines after the checkpoint, the events of those steps are purged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mpirnn.training.tensorboard import Board, folder

    monkeypatch.chdir(tmp_path)
    first = Board("resumed")
    for step in (1, 2, 3, 4):
        first.write({"step": step, "loss": float(step)})
    first.close()
    again = Board("resumed", resumed_at=2)
    for step in (3, 4, 5):
        again.write({"step": step, "loss": 10.0 * step})
    again.close()
    events = EventAccumulator(str(folder("resumed")))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
