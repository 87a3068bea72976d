"""evaluate, generate and forecast through the real launcher (`mpirun -n N python -m mpirnn.X`):
the same numbers at any rank count and grid, and bad input ending every rank with one line.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_inference_commands.py

The models are trained briefly with the real trainer (or, for the bad-input cases, written as
the trainer writes checkpoints, which is much faster); each failure must exit 1 with exactly
one `mpirnn: error:` line, no traceback, and leave no output file behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import make_series_dataset, make_token_dataset

from mpirnn.config import load_config
from mpirnn.data.prepare import prepare_npy
from mpirnn.inference.model_info import ModelInfo
from mpirnn.models import build_model
from mpirnn import checkpoint

pytestmark = pytest.mark.timeout(300)

MPIRUN = Path(sys.executable).parent / "mpirun"
SMALL = {"model.hidden": 16, "model.layers": 2, "model.embed": 8, "data.seq_len": 32, "data.batch_size": 8,
         "train.steps": 20, "train.lr": 1e-2, "output.progress": "false", "output.sample_bytes": 0}


def run(n: int, module: str, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MPIRNN_TRACEBACK"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(MPIRUN), "-n", str(n), sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def train(tmp: Path, data: Path, name: str, **extra) -> Path:
    values = {**SMALL, "data.path": data, "checkpoint.dir": tmp / name, "output.metrics": tmp / f"{name}.jsonl",
              **extra}
    done = run(1, "mpirnn.train", *[a for k, v in values.items() for a in ("--set", f"{k}={v}")])
    assert done.returncode == 0, done.stderr
    return tmp / name


def sine_with_trend(root: Path, length: int = 1_200) -> Path:
    """A known series: a sine of period 25 on a straight line, far from 0 (data units matter)."""
    t = np.arange(length, dtype=np.float64)
    np.save(root / "trend.npy", (100.0 + 0.05 * t + 3.0 * np.sin(2 * np.pi * t / 25))[:, None].astype(np.float32))
    prepare_npy(root / "trend.npy", root / "trend", kind="series", val_fraction=0.1)
    return root / "trend"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    tokens = make_token_dataset(root / "tokens", val_fraction=0.1)     # val: 2000 bytes
    trend = sine_with_trend(root)
    return {"root": root, "tokens": tokens, "trend": trend,
            "token_model": train(root, tokens, "tok", **{"model.cell": "lstm"}),
            "trend_model": train(root, trend, "trend", **{"model.cell": "gru", "data.seq_len": 50})}


def one_error_line(done: subprocess.CompletedProcess, words: str) -> str:
    shown = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 1, shown
    assert "Traceback" not in done.stderr + done.stdout, shown
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpirnn: error: "), shown
    assert words in lines[0], f"{words!r} not in {lines[0]!r}"
    return lines[0]


# -- the same numbers on any grid ----------------------------------------------------------

def test_evaluate_one_long_stream_split_over_ranks(trained):
    root, ckpt = trained["root"], trained["token_model"]
    outs = {}
    for n in (1, 2):
        out = root / f"long-{n}.json"
        done = run(n, "mpirnn.evaluate", "--checkpoint", ckpt, "--set", f"parallel.sp={n}",
                   "--set", "data.seq_len=1999", "--out", out)
        assert done.returncode == 0, done.stderr
        outs[n] = json.loads(out.read_text())
        assert done.stdout.count("val split of") == 1      # rank 0 prints, once
    one, two = outs[1], outs[2]
    assert one["sequences"] == 1 and one["elements"] == 1999 and two["grid"]["sp"] == 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)    # float32: the sums differ in rounding only
    assert one["bits_per_byte"] == pytest.approx(one["loss"] / math.log(2))
    assert {"loss", "elements", "split", "bits_per_byte"} <= set(one) and one["split"] == "val"


def test_evaluate_equals_the_val_loss_of_training(trained):
    root = trained["root"]
    ckpt = train(root, trained["tokens"], "tok-eval", **{"model.cell": "gru", "train.steps": 4, "train.eval_every": 4})
    logged = [json.loads(line) for line in (root / "tok-eval.jsonl").read_text().splitlines()][-2]["val_loss"]
    done = run(2, "mpirnn.evaluate", "--checkpoint", ckpt, "--set", "parallel.dp=2", "--out", root / "e.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((root / "e.json").read_text())["loss"] == pytest.approx(logged, rel=1e-6)


def test_forecast_a_sine_on_a_trend(trained):
    root, ckpt = trained["root"], trained["trend_model"]
    results = {}
    for n in (1, 2):
        out = root / f"fc-{n}.csv"
        done = run(n, "mpirnn.forecast", "--checkpoint", ckpt, "--horizon", 30, "--season", 25,
                   "--context", 100, "--out", out, "--plot", root / f"fc-{n}.png")
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("seasonal naive (25)") == 1
        rows = list(csv.DictReader(out.open()))
        results[n] = (rows, json.loads(out.with_suffix(".json").read_text()))
    rows, summary = results[1]
    assert results[2] == results[1]                       # rank 0 computes the same on any world size
    # a point model's band: calibrated on backtests by default (tests/test_forecast_calibration_command.py)
    assert len(rows) == 30 and list(rows[0]) == ["step", "forecast", "actual", "q0.1", "q0.9"]
    forecast = np.array([float(r["forecast"]) for r in rows])
    actual = np.array([float(r["actual"]) for r in rows])
    assert np.all(np.isfinite(forecast)) and np.all(np.abs(forecast - actual) < 20)   # data units, near ~150
    assert actual[0] == pytest.approx(100.0 + 0.05 * 1080 + 3.0 * np.sin(2 * np.pi * 1080 / 25), abs=1e-4)
    for key in ("rmse", "mae"):
        assert summary[key] > 0 and summary["baselines"]["last_value"][key] > 0
        assert summary["baselines"]["seasonal_naive"][key] > 0
    assert (root / "fc-1.png").read_bytes().startswith(b"\x89PNG")


def test_forecast_quantiles_of_a_multi_step_model(trained):
    # Trained with the pinball loss and a 5-step head; a 30-step forecast is 6x that, so it warns.
    root = trained["root"]
    ckpt = train(root, trained["trend"], "trend-q", **{"model.cell": "gru", "data.seq_len": 50, "train.eval_every": 20,
                                                       "train.loss": '"quantile"', "train.horizon": 5})
    out = root / "fq.csv"
    done = run(2, "mpirnn.forecast", "--checkpoint", ckpt, "--horizon", 30, "--season", 25, "--context", 100,
               "--out", out, "--plot", root / "fq.png")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("mpirnn: warning: --horizon 30")]
    assert len(warnings) == 1 and "train.horizon = 5" in warnings[0], done.stderr
    assert "coverage" in done.stdout and "pinball" in done.stdout
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["step", "forecast", "actual", "q0.1", "q0.5", "q0.9"]
    q = np.array([[float(r[k]) for k in ("q0.1", "q0.5", "q0.9")] for r in rows])
    actual = np.array([float(r["actual"]) for r in rows])
    assert np.all(np.diff(q, axis=1) >= 0) and [float(r["forecast"]) for r in rows] == q[:, 1].tolist()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["quantiles"] == [0.1, 0.5, 0.9] and summary["band"] == [0.1, 0.9]
    assert summary["trained_horizon"] == 5
    assert summary["coverage"] == pytest.approx(np.mean((actual >= q[:, 0]) & (actual <= q[:, 2])))
    diff = actual[:, None] - q
    pinball = np.maximum(np.array([0.1, 0.5, 0.9]) * diff, (np.array([0.1, 0.5, 0.9]) - 1) * diff).mean()
    assert summary["pinball"] == pytest.approx(pinball) and summary["crps"] == pytest.approx(2 * pinball)
    assert summary["rmse"] == pytest.approx(math.sqrt(np.mean((q[:, 1] - actual) ** 2)))
    assert (root / "fq.png").read_bytes().startswith(b"\x89PNG")
    # evaluate scores the same objective as training's validation (the pinball loss over 5 steps ahead).
    logged = [json.loads(line) for line in (root / "trend-q.jsonl").read_text().splitlines()][-2]["val_loss"]
    done = run(2, "mpirnn.evaluate", "--checkpoint", ckpt, "--set", "parallel.sp=2", "--out", root / "q.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((root / "q.json").read_text())["loss"] == pytest.approx(logged, rel=1e-5)


def test_generate_is_the_same_at_any_rank_count(trained):
    texts = [run(n, "mpirnn.generate", "--checkpoint", trained["token_model"], "--prompt", "def ", "--bytes", 40,
                 "--seed", 3) for n in (1, 2)]
    assert all(t.returncode == 0 for t in texts), texts[-1].stderr
    assert texts[0].stdout == texts[1].stdout and texts[0].stdout.startswith("def ")


# -- bad input: one line on every rank, exit 1, nothing written ------------------------------

def write_checkpoint(directory: Path, *, vocab_size=None, features=None):
    """A checkpoint as the trainer writes it (format 2, config, "dataset" record)."""
    cfg = load_config(None, ["model.cell=gru", "model.hidden=8", "model.layers=1", "model.embed=4"])
    model = build_model(cfg, vocab_size=vocab_size, features=features)
    info = ModelInfo("tokens" if vocab_size else "series", vocab_size, features, None)
    state = {"format": 2, "step": 1, "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    checkpoint.save(directory, 1, state, cfg.to_dict(), {"dataset": info.to_json()})
    return directory


@pytest.fixture(scope="module")
def bad(tmp_path_factory, trained):
    root = tmp_path_factory.mktemp("bad")
    ids = np.random.default_rng(0).integers(0, 100, 3_000).astype(np.int32)
    np.save(root / "small.npy", ids)
    prepare_npy(root / "small.npy", root / "small", vocab_size=100, val_fraction=0.1)
    return {"root": root, "small": root / "small", "small_model": write_checkpoint(root / "ck100", vocab_size=100),
            "one_feature": write_checkpoint(root / "ck1", features=1),
            "three": make_series_dataset(root / "three", length=3_000, val_fraction=0.1),
            "no_val": make_token_dataset(root / "noval", length=6_000)}


def test_bad_checkpoints(trained, bad):
    root = bad["root"]
    one_error_line(run(2, "mpirnn.evaluate", "--checkpoint", root / "missing"), "does not exist")
    (root / "empty").mkdir()
    one_error_line(run(2, "mpirnn.generate", "--checkpoint", root / "empty", "--prompt", "a"), "holds no checkpoint")
    (root / "ckpt-00000001.pt").write_bytes(b"not a checkpoint")
    one_error_line(run(2, "mpirnn.forecast", "--checkpoint", root / "ckpt-00000001.pt", "--horizon", 3,
                       "--out", root / "x.csv"), "unreadable")
    assert not (root / "x.csv").exists()


def test_model_and_data_that_do_not_match(trained, bad):
    one_error_line(run(2, "mpirnn.evaluate", "--checkpoint", trained["token_model"], "--data", bad["small"]),
                   "holds a token model (vocab_size=256) but")
    one_error_line(run(1, "mpirnn.evaluate", "--checkpoint", trained["token_model"], "--data", trained["trend"]),
                   "is series data")
    out = bad["root"] / "three.csv"
    one_error_line(run(2, "mpirnn.forecast", "--checkpoint", bad["one_feature"], "--data", bad["three"],
                       "--horizon", 5, "--out", out), "has 3 feature(s): the feature counts must be the same")
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_commands_on_the_wrong_kind_of_model(trained, bad):
    out = bad["root"] / "tok.csv"
    one_error_line(run(2, "mpirnn.forecast", "--checkpoint", trained["token_model"], "--horizon", 5, "--out", out),
                   "forecast needs a series model")
    assert not out.exists()
    one_error_line(run(2, "mpirnn.generate", "--checkpoint", trained["trend_model"], "--prompt", "a"),
                   "generate needs a token model")


def test_horizon_past_the_val_split(trained, bad):
    out = bad["root"] / "long.csv"
    line = one_error_line(run(2, "mpirnn.forecast", "--checkpoint", trained["trend_model"], "--horizon", 121,
                              "--out", out, "--plot", bad["root"] / "long.png"), "--horizon 121 is longer than")
    assert "(120 steps)" in line and "--no-actuals" in line
    assert not out.exists() and not (bad["root"] / "long.png").exists()
    done = run(1, "mpirnn.forecast", "--checkpoint", trained["trend_model"], "--horizon", 121, "--no-actuals",
               "--out", out)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 121 and rows[119]["actual"] != "" and rows[120]["actual"] == ""


def test_prompt_past_the_vocabulary(bad):
    one_error_line(run(2, "mpirnn.generate", "--checkpoint", bad["small_model"], "--prompt", "abc{"),
                   "--prompt 'abc{' has byte 123 ('{') at position 3, past the model's vocabulary (vocab_size=100")


def test_training_refuses_before_compute(bad, tmp_path):
    args = [a for k, v in {**SMALL, "data.path": bad["no_val"], "train.eval_every": 5,
                           "output.metrics": tmp_path / "m.jsonl"}.items() for a in ("--set", f"{k}={v}")]
    one_error_line(run(2, "mpirnn.train", *args), "train.eval_every = 5 needs a val split")
    prompt = [a for k, v in {**SMALL, "data.path": bad["small"], "output.sample_bytes": 10,
                             "output.sample_prompt": "a{", "output.metrics": tmp_path / "m.jsonl"}.items()
              for a in ("--set", f"{k}={v}")]
    one_error_line(run(2, "mpirnn.train", *prompt), "output.sample_prompt 'a{' has byte 123")
    assert not (tmp_path / "m.jsonl").exists(), "refused before the run started"
    # The default prompt ("def ") does not fit a 100-token vocabulary: the sample is skipped, with a note.
    default = [a for k, v in {**SMALL, "train.steps": 2, "data.path": bad["small"], "output.sample_bytes": 10,
                              "output.metrics": tmp_path / "d.jsonl"}.items() for a in ("--set", f"{k}={v}")]
    done = run(2, "mpirnn.train", *default)
    assert done.returncode == 0, done.stderr
    assert "no sample will be printed" in done.stdout and "sample:" not in done.stdout
