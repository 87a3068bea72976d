"""train.horizon = "auto" (the default): a series stream with a season trains a direct head over
min(season, seq_len / 4) steps on windows at every step; everything else predicts the next step.
The resolved number is what the checkpoint records, a resume adopts and a forecast reads.

    python -m pytest -q tests/test_horizon_default.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpirnn.config import config_from_dict, load_config, steps_ahead
from mpirnn.data.manifest import load_manifest
from mpirnn.data.sampler import window_stride
from mpirnn.errors import CheckpointError, ConfigError
from mpirnn.training.resume import take_settings
from mpirnn.training.tasks import adopt_horizon, auto_horizon
from support import make_dated_series, make_series_dataset, make_token_dataset, train_under_mpirun


@pytest.fixture(scope="module")
def weekly(tmp_path_factory):
    return make_dated_series(tmp_path_factory.mktemp("weekly") / "ds", length=600, frequency="weekly",
                             features=1, val_fraction=0.2)


def settings(**given):
    return load_config(None, [f"{key}={value}" for key, value in given.items()])


def test_auto_is_the_season_capped_at_a_quarter_of_the_window(weekly, tmp_path):
    manifest = load_manifest(weekly)
    assert manifest.season == 52
    assert auto_horizon(manifest, settings(**{"data.seq_len": 104})) == 26
    assert auto_horizon(manifest, settings(**{"data.seq_len": 400})) == 52
    assert auto_horizon(manifest, settings(**{"data.seq_len": 3})) == 1
    assert auto_horizon(manifest, settings(**{"data.seq_len": 104, "train.stateful": "true"})) == 1
    no_season = load_manifest(make_series_dataset(tmp_path / "plain", length=600, features=1))
    assert auto_horizon(no_season, settings(**{"data.seq_len": 104})) == 1
    tokens = load_manifest(make_token_dataset(tmp_path / "tokens", length=2_000, shard_size=1_000))
    assert auto_horizon(tokens, settings(**{"data.seq_len": 104})) == 1


def test_adopting_resolves_only_auto(weekly):
    manifest = load_manifest(weekly)
    cfg = settings(**{"data.seq_len": 104})
    assert cfg.train.horizon == "auto" and steps_ahead(cfg.train) == 1   # no dataset seen yet: no season
    adopt_horizon(cfg, manifest)
    assert cfg.train.horizon == 26
    given = settings(**{"data.seq_len": 104, "train.horizon": 3})
    adopt_horizon(given, manifest)
    assert given.train.horizon == 3


def test_a_multi_step_head_trains_on_windows_at_every_step():
    # 3000 steps give 68 cuts of 44, enough for a batch of 16: a next-step model keeps the cuts.
    assert window_stride("auto", "series", False, 44, 3000, 16, horizon=1) == 44
    assert window_stride("auto", "series", False, 44, 3000, 16, horizon=11) == 1
    assert window_stride("cut", "series", False, 44, 3000, 16, horizon=11) == 44     # asked for: kept
    assert window_stride("auto", "series", True, 44, 3000, 16, horizon=11) == 44     # stateful lanes
    assert window_stride("auto", "tokens", False, 44, 3000, 16, horizon=11) == 44


def test_bad_horizons_are_refused_in_one_line():
    for bad, shown in (("0", "0"), ('"soon"', "'soon'"), ("200", "200")):
        with pytest.raises(ConfigError, match=rf"train.horizon = {shown}: give \"auto\" or 1 to data.seq_len"):
            settings(**{"train.horizon": bad})


def test_a_checkpoint_config_without_a_horizon_was_a_next_step_model():
    cfg = config_from_dict({"train": {"steps": 5}})
    assert cfg.train.horizon == 1
    recorded = settings(**{"train.horizon": 26}).to_dict()
    assert config_from_dict(json.loads(json.dumps(recorded))).train.horizon == 26


def test_a_resume_adopts_the_checkpoints_head_and_refuses_another():
    saved = {"train": {"horizon": 26, "loss": "quantile", "quantiles": [0.1, 0.5, 0.9]}}
    cfg = settings()
    adopted, warnings, _ = take_settings(cfg, saved)
    assert cfg.train.horizon == 26 and cfg.train.loss == "quantile"
    assert "train.horizon=26" in adopted and not warnings
    with pytest.raises(CheckpointError, match=r"train.horizon = 1 here, 26 in the checkpoint"):
        take_settings(settings(**{"train.horizon": 1}), saved)


def test_training_with_only_the_data_path_records_the_resolved_horizon(weekly, tmp_path):
    """The path a user takes: mpirun with the defaults on (progress, watchdog, validation), only the
    data and a small model given; the checkpoint holds the number, and forecast reads it."""
    ckpt = tmp_path / "ckpt"
    done = train_under_mpirun(2, {"data.path": weekly, "data.seq_len": 104, "data.batch_size": 8,
                                  "model.hidden": 16, "model.layers": 1, "model.embed": 8, "train.steps": 4,
                                  "checkpoint.dir": ckpt, "output.metrics": tmp_path / "m.jsonl"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    meta = json.loads(next(ckpt.glob("ckpt-*.json")).read_text())
    assert meta["config"]["train"]["horizon"] == 26
    assert "train.horizon = 26" in done.stderr   # the run says what "auto" chose
    forecast = subprocess.run([sys.executable, "-m", "mpirnn.forecast", "--checkpoint", str(ckpt), "--horizon", "52",
                               "--out", str(tmp_path / "f.csv")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
    assert forecast.returncode == 0, forecast.stderr
    assert "seasonal naive (52)" in forecast.stdout      # the dataset's season, without --season
    assert "warning" not in forecast.stderr               # 52 steps is within what a 26-step head is trained for
