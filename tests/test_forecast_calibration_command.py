"""`python -m mpirnn.forecast` calibrates its band by default (docs/forecasting.md, "Calibrated
bands"): end to end through the real launcher on tiny models trained with the real trainer, the
flags (--calibrate K, --no-calibrate), and the val split (the actuals scored) never used.

    .venv/bin/python -m pytest -q tests/test_forecast_calibration_command.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from support import make_dated_series
from test_inference_commands import SMALL, one_error_line, run, train

from mpirnn.data.manifest import load_manifest
from mpirnn.data.prepare import prepare_csv
from mpirnn.inference import backtest

pytestmark = pytest.mark.timeout(600)

HORIZON = 16   # weekly data, season 52; the tiny models' seq_len 32 gives train.horizon = auto = 8


def changed_after_the_origin(weekly: Path, out: Path) -> Path:
    """The same dataset but every value of the val split (after the forecast origin) moved by +5."""
    rows = weekly.with_suffix(".csv").read_text().splitlines()
    train_length = load_manifest(weekly).length
    for i in range(1 + train_length, len(rows)):
        date, value = rows[i].split(",")
        rows[i] = f"{date},{float(value) + 5.0!r}"
    changed = out.parent / f"{out.name}.csv"
    changed.write_text("\n".join(rows) + "\n")
    prepare_csv(changed, out, columns=["v0"], time_column="date", val_fraction=0.2, shard_size=150)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    weekly = make_dated_series(root / "weekly", length=600, frequency="weekly", features=1, val_fraction=0.2)
    tiny = {"model.hidden": SMALL["model.hidden"], "model.embed": SMALL["model.embed"], "data.seq_len": 32,
            "train.steps": 20, "output.progress": "false"}
    return {"root": root, "weekly": weekly, "changed": changed_after_the_origin(weekly, root / "changed"),
            "point": train(root, weekly, "point", **tiny),
            "quantile": train(root, weekly, "quantile", **tiny, **{"train.loss": '"quantile"'})}


def forecast(models, name: str, out: str, *flags, n: int = 1):
    path = models["root"] / out
    done = run(n, "mpirnn.forecast", "--checkpoint", models[name], "--horizon", HORIZON, "--out", path, *flags)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(path.open()))
    return done, rows, json.loads(path.with_suffix(".json").read_text()), path.read_bytes()


def column(rows, name):
    return np.array([float(r[name]) for r in rows])


def test_defaults_give_a_point_model_a_calibrated_band(models):
    done, rows, summary, raw = forecast(models, "point", "p.csv")
    assert list(rows[0]) == ["step", "forecast", "actual", "q0.1", "q0.9"]
    cal = summary["calibration"]
    assert cal["calibrated"] and cal["origins"] == 40 and cal["stride"] == backtest.stride_for(HORIZON)
    assert cal["method"] == "absolute residual" and cal["last_origin"] == 480 - HORIZON   # train split: 480 steps
    assert "0.1-0.9 band calibrated (split-conformal, absolute residual) on 40 backtests" in done.stdout
    point, lo, hi, actual = (column(rows, k) for k in ("forecast", "q0.1", "q0.9", "actual"))
    widths = np.array(cal["widths"][0])
    assert widths.shape == (HORIZON,) and np.all(widths > 0)
    np.testing.assert_allclose(hi - point, widths, rtol=1e-9) and np.testing.assert_allclose(point - lo, widths,
                                                                                              rtol=1e-9)
    assert summary["quantiles"] == [0.1, 0.9] and summary["band"] == [0.1, 0.9]
    assert summary["coverage"] == pytest.approx(np.mean((actual >= lo) & (actual <= hi)))
    assert "uncalibrated" not in summary               # a point model has no band of its own
    # Deterministic, and the same under mpirun -n 2 (rank 0 computes).
    assert forecast(models, "point", "p2.csv", n=2)[3] == raw


def test_the_flags(models):
    _, rows, summary, _ = forecast(models, "point", "off.csv", "--no-calibrate")
    assert list(rows[0]) == ["step", "forecast", "actual"] and summary["quantiles"] is None
    assert summary["calibration"] == {"calibrated": False, "reason": "--no-calibrate"}
    assert forecast(models, "point", "k12.csv", "--calibrate", 12)[2]["calibration"]["origins"] == 12
    fit = len(backtest.origins(480, HORIZON, 32, 52, 10**6, backtest.stride_for(HORIZON)))
    assert forecast(models, "point", "all.csv", "--calibrate", 10**6)[2]["calibration"]["origins"] == fit
    # Origins only from step 400 on (as for a model trained on the first 400 steps): 464, 460, ..., 400.
    late = forecast(models, "point", "late.csv", "--calibrate-from", 400)[2]["calibration"]
    assert (late["origins"], late["first_origin"], late["last_origin"]) == (17, 400, 464)
    # Too little history before the origin for 10 backtests: the band is left out, saying why.
    done, rows, summary, _ = forecast(models, "point", "short.csv", "--context", 400)
    assert "mpirnn: note: band not calibrated: only 4 backtest origin(s) fit" in done.stdout
    assert list(rows[0]) == ["step", "forecast", "actual"] and not summary["calibration"]["calibrated"]
    out = models["root"] / "bad.csv"
    one_error_line(run(1, "mpirnn.forecast", "--checkpoint", models["point"], "--horizon", HORIZON, "--out", out,
                       "--calibrate-from", 480), "--calibrate-from 480: give a step of the train split, 0 to 479")
    one_error_line(run(2, "mpirnn.forecast", "--checkpoint", models["point"], "--horizon", HORIZON, "--out", out,
                       "--calibrate", 0), "--calibrate 0: calibrate on 1 or more backtests")
    both = run(1, "mpirnn.forecast", "--checkpoint", models["point"], "--horizon", HORIZON, "--out", out,
               "--calibrate", 5, "--no-calibrate")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr and not out.exists()


def test_the_scored_actuals_are_never_used(models):
    # The val split moved by +5 after the origin: the actuals (and the coverage) change, the band does not.
    a = models["weekly"]
    assert load_manifest(models["changed"]).normalization == load_manifest(a).normalization
    for name in ("point", "quantile"):
        _, rows, summary, _ = forecast(models, name, f"{name}-a.csv")
        _, moved, moved_summary, _ = forecast(models, name, f"{name}-b.csv", "--data", models["changed"])
        np.testing.assert_allclose(column(moved, "actual"), column(rows, "actual") + 5.0, atol=1e-4)
        for key in [k for k in rows[0] if k.startswith("q") or k == "forecast"]:
            assert np.array_equal(column(moved, key), column(rows, key)), key
        assert moved_summary["calibration"] == summary["calibration"]


def test_a_quantile_model_band_is_widened_from_its_own(models):
    done, rows, summary, _ = forecast(models, "quantile", "q.csv")
    _, own, own_summary, _ = forecast(models, "quantile", "q-own.csv", "--no-calibrate")
    assert list(rows[0]) == list(own[0]) == ["step", "forecast", "actual", "q0.1", "q0.5", "q0.9"]
    cal = summary["calibration"]
    assert cal["method"] == "cqr" and cal["origins"] == 40 and "(uncalibrated " in done.stdout
    widths = np.array(cal["widths"][0])
    lo, hi, mid = column(own, "q0.1") - widths, column(own, "q0.9") + widths, column(own, "q0.5")
    # A band is never narrowed past the point forecast (the median), which never moves.
    np.testing.assert_allclose(column(rows, "q0.1"), np.minimum(lo, mid), rtol=1e-9)
    np.testing.assert_allclose(column(rows, "q0.9"), np.maximum(hi, mid), rtol=1e-9)
    assert np.array_equal(column(rows, "q0.5"), mid) and np.array_equal(column(rows, "forecast"), mid)
    assert summary["uncalibrated"]["coverage"] == own_summary["coverage"]
    assert summary["uncalibrated"]["pinball"] == own_summary["pinball"]
