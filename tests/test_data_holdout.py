"""data.holdout: the last steps of a series' train split are kept out of training, and `forecast`
then calibrates its band on them, out of sample (docs/forecasting.md, "Calibrated bands").

    .venv/bin/python -m pytest -q tests/test_data_holdout.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import make_dated_series, make_token_dataset
from test_inference_commands import SMALL, one_error_line, run

from mpirnn import load_checkpoint
from mpirnn.config import load_config
from mpirnn.data.loader import BatchLoader
from mpirnn.data.manifest import load_manifest
from mpirnn.data.prepare import prepare_csv
from mpirnn.data.reads import Reads
from mpirnn.errors import ConfigError, DataError
from mpirnn.forecast import held_out_start
from mpirnn.grid import Grid
from mpirnn.training.dataset_fit import check_fit

pytestmark = pytest.mark.timeout(600)

TRAIN_STEPS = 480            # weekly, 600 steps, val_fraction 0.2
HOLDOUT = 120
SEQ, HORIZON = 32, 16        # the tiny models' train.horizon = auto = 8 (seq_len / 4)


@pytest.fixture(scope="module")
def weekly(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    return make_dated_series(root / "weekly", length=600, frequency="weekly", features=1, val_fraction=0.2)


def config(data: Path, **extra):
    settings = {"data.path": f'"{data}"', "data.seq_len": SEQ, "data.batch_size": 8, "model.dtype": '"float64"',
                **extra}
    return load_config(None, [f"{k}={v}" for k, v in settings.items()])


def window_ends(cfg, manifest, steps: int) -> tuple[np.ndarray, int]:
    """(the step past the last each training window of the first `steps` steps reads, the steps
    between window starts)."""
    loader = BatchLoader(manifest, cfg, Reads((0, 8), (0, SEQ)), "cpu", torch.float64)
    starts = np.concatenate([[loader.reader.start(w, SEQ) for w in loader.global_windows(s)] for s in range(steps)])
    loader.close()
    return starts + SEQ + 1, loader.reader.stride or SEQ


@pytest.mark.parametrize("settings", [{}, {"train.horizon": 8}, {"data.windows": '"every"', "train.horizon": 1}])
def test_training_windows_end_before_the_held_out_steps(weekly, settings):
    manifest = load_manifest(weekly)
    kept, stride = window_ends(config(weekly, **settings, **{"data.holdout": HOLDOUT}), manifest, 400)
    every, _ = window_ends(config(weekly, **settings), manifest, 400)
    assert kept.max() <= TRAIN_STEPS - HOLDOUT < every.max()
    # The bound is tight: windows still come within a stride of the held-out steps (every epoch
    # draws every window; 400 steps of 8 rows are several epochs).
    assert kept.max() > TRAIN_STEPS - HOLDOUT - stride


def reversed_tail(weekly: Path, out: Path, steps: int) -> Path:
    """The same series with the order of its last `steps` train steps reversed: the same values, so
    the same normalization (to rounding), but other windows there."""
    rows = weekly.with_suffix(".csv").read_text().splitlines()
    head, body = rows[0], rows[1:]
    tail = body[TRAIN_STEPS - steps:TRAIN_STEPS]
    values = [r.split(",")[1] for r in tail][::-1]
    body[TRAIN_STEPS - steps:TRAIN_STEPS] = [f"{r.split(',')[0]},{v}" for r, v in zip(tail, values)]
    csv = out.parent / f"{out.name}.csv"
    csv.write_text("\n".join([head, *body]) + "\n")
    prepare_csv(csv, out, columns=["v0"], time_column="date", val_fraction=0.2, shard_size=150)
    return out


def train_params(tmp: Path, data: Path, name: str, **extra) -> list[torch.Tensor]:
    values = {**SMALL, "data.path": data, "checkpoint.dir": tmp / name, "data.seq_len": SEQ, "train.steps": 12,
              "model.dtype": "float64", **extra}
    done = run(1, "mpirnn.train", *[a for k, v in values.items() for a in ("--set", f"{k}={v}")])
    assert done.returncode == 0, done.stderr
    model, _ = load_checkpoint(tmp / name)
    return [p.detach().clone() for p in model.parameters()]


def test_the_held_out_steps_never_reach_the_parameters(weekly, tmp_path):
    other = reversed_tail(weekly, tmp_path / "other", HOLDOUT)
    a, b = load_manifest(weekly), load_manifest(other)
    assert a.normalization.mean == pytest.approx(b.normalization.mean, rel=1e-12)
    kept = [train_params(tmp_path, data, f"kept-{i}", **{"data.holdout": HOLDOUT}) for i, data in enumerate((weekly, other))]
    for x, y in zip(*kept):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9)
    # Without the holdout the same change does reach them, so the comparison above can fail.
    seen = [train_params(tmp_path, data, f"seen-{i}") for i, data in enumerate((weekly, other))]
    assert max(float((x - y).abs().max()) for x, y in zip(*seen)) > 1e-6


def test_bad_settings_are_refused(weekly, tmp_path):
    for value in ("-1", '"10"', "true", "1.5"):
        with pytest.raises(ConfigError, match="data.holdout"):
            config(weekly, **{"data.holdout": value})
    grid = Grid(world_size=1, dp=1)
    with pytest.raises(DataError, match="holds out every step"):
        check_fit(load_manifest(weekly), config(weekly, **{"data.holdout": TRAIN_STEPS}), grid)
    with pytest.raises(DataError, match="data.holdout keeps out of training"):
        check_fit(load_manifest(weekly), config(weekly, **{"data.holdout": TRAIN_STEPS - SEQ - 3,
                                                           "data.windows": '"cut"'}), grid)
    tokens = make_token_dataset(tmp_path / "tokens")
    with pytest.raises(DataError, match="only a series stream keeps its last steps out"):
        check_fit(load_manifest(tokens), config(tokens, **{"data.holdout": 10}), grid)


def test_forecast_starts_its_backtests_where_the_holdout_does(weekly, tmp_path):
    manifest = load_manifest(weekly)
    assert held_out_start(config(weekly), manifest, None) == 0
    assert held_out_start(config(weekly, **{"data.holdout": HOLDOUT}), manifest, None) == TRAIN_STEPS - HOLDOUT
    # --data another dataset: the held-out steps start where they did in the one it trained on.
    longer = make_dated_series(tmp_path / "longer", length=600, frequency="weekly", features=1, val_fraction=0.1)
    assert held_out_start(config(weekly, **{"data.holdout": HOLDOUT}), load_manifest(longer), str(longer)) == 360
    assert held_out_start(config(tmp_path / "gone", **{"data.holdout": HOLDOUT}), manifest, str(weekly)) == 0


def test_train_with_a_holdout_then_forecast_with_the_defaults(weekly, tmp_path):
    # Every default on (progress bar, watchdog, validation), 2 ranks, as a user runs it.
    ckpt = tmp_path / "ckpt"
    settings = {"data.path": weekly, "checkpoint.dir": ckpt, "data.holdout": HOLDOUT, "model.hidden": 16,
                "model.embed": 8, "data.seq_len": SEQ, "data.batch_size": 8, "train.steps": 20}
    done = run(2, "mpirnn.train", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")], timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "f.csv"
    done = run(1, "mpirnn.forecast", "--checkpoint", ckpt, "--horizon", HORIZON, "--out", out)
    assert done.returncode == 0, done.stderr
    cal = json.loads(out.with_suffix(".json").read_text())["calibration"]
    # Origins 464, 460, ..., 360: every backtest scores steps the model never trained on.
    assert (cal["origins"], cal["first_origin"], cal["last_origin"]) == (27, 360, 464)
    assert cal["held_out"] == HOLDOUT
    assert f"out of sample: the model never trained on the last {HOLDOUT} train steps (data.holdout)" in done.stdout
    # --calibrate-from given by hand wins (0: the newest 40 origins, in sample too).
    done = run(1, "mpirnn.forecast", "--checkpoint", ckpt, "--horizon", HORIZON, "--out", out, "--calibrate-from", 0)
    cal = json.loads(out.with_suffix(".json").read_text())["calibration"]
    assert done.returncode == 0 and cal["origins"] == 40 and cal["first_origin"] < 360 and cal["held_out"] == 0
    # A holdout that leaves too few windows is refused before any compute, on every rank.
    one_error_line(run(2, "mpirnn.train", "--set", f"data.path={weekly}", "--set", f"checkpoint.dir={tmp_path / 'x'}",
                       "--set", "data.holdout=470", "--set", f"data.seq_len={SEQ}"),
                   "data.holdout keeps out of training")
