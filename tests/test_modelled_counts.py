"""parallel.calibration: the performance model chooses the automatic microbatches and chunks
(by default with this CPU's calibration; the fixed rules where there is none).

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_modelled_counts.py
"""

import json

import pytest
from test_perf_model import toy_calibration

from mpirnn.config import load_config
from mpirnn.errors import ConfigError
from mpirnn.grid import Grid
from mpirnn.perf import calibration as calibration_file
from mpirnn.perf.calibration import Calibration
from mpirnn.perf.step_model import Shape
from mpirnn.perf.ranking import best_microbatches
from mpirnn.training.layout import modelled_counts


def toy(tmp_path, **costs):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(toy_calibration(**costs)))
    return path


def test_the_rules_keep_the_counts_as_configured_and_say_so():
    cfg = load_config(None, ["parallel.microbatches=3", "parallel.calibration=rules"])
    assert modelled_counts(cfg, Grid(2, dp=1, sp=2), 256, None) == (3, 0,
                                                                   "the fixed rules (parallel.calibration = rules)")


def test_without_sp_or_pp_nothing_is_chosen_and_nothing_said():
    cfg = load_config(None, [])
    assert modelled_counts(cfg, Grid(2, dp=2), 256, None) == (0, 0, "")


def test_auto_uses_this_cpus_calibration_and_falls_back_to_the_rules(tmp_path, monkeypatch):
    path = toy(tmp_path, step_per_row_s=1e-4, call_s=0.0)
    cfg = load_config(None, ["parallel.sp=2", "data.batch_size=32", "train.device=cpu"])
    assert cfg.parallel.calibration == "auto"
    monkeypatch.setattr(calibration_file, "find_for_host", lambda cpu, *scope: path)
    m, c, chooser = modelled_counts(cfg, Grid(2, dp=1, sp=2), 256, None)
    assert m > 2 and chooser.startswith("the performance model, calibration") and "toy.json" in chooser

    monkeypatch.setattr(calibration_file, "find_for_host", lambda cpu, *scope: None)
    m, c, chooser = modelled_counts(cfg, Grid(2, dp=1, sp=2), 256, None)
    assert (m, c) == (0, 0)
    assert "no calibration of this CPU" in chooser and "python -m mpirnn.plan --calibrate" in chooser


def test_auto_on_a_gpu_takes_the_rules_not_a_cpu_calibration(tmp_path, monkeypatch):
    path = toy(tmp_path, step_per_row_s=1e-4, call_s=0.0)
    monkeypatch.setattr(calibration_file, "find_for_host", lambda cpu, *scope: path)
    cfg = load_config(None, ["parallel.sp=2", "train.device=cuda"])
    m, c, chooser = modelled_counts(cfg, Grid(2, dp=1, sp=2), 256, None)
    assert (m, c) == (0, 0) and "no calibration of this GPU" in chooser


def test_several_threads_per_rank_take_the_rules_the_calibration_times_one(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration_file, "find_for_host", lambda cpu, *scope: toy(tmp_path, step_per_row_s=1e-4))
    cfg = load_config(None, ["parallel.sp=2", "train.device=cpu"])
    m, c, chooser = modelled_counts(cfg, Grid(2, dp=1, sp=2), 256, None, threads=4)
    assert (m, c) == (0, 0) and "this run has 4" in chooser and "train.threads = 1" in chooser


def test_a_count_set_by_hand_is_kept_and_the_other_chosen_around_it(tmp_path):
    path = toy(tmp_path, step_per_row_s=1e-4, call_s=1e-3)
    cfg = load_config(None, [f"parallel.calibration={path}", "parallel.microbatches=2", "parallel.pp=2",
                             "data.seq_len=256", "data.batch_size=8"])
    m, c, chooser = modelled_counts(cfg, Grid(2, dp=1, pp=2), 256, None)
    best = best_microbatches(Shape.from_config(cfg, 256), dict(dp=1, sp=1, pp=2, tp=1),
                             Calibration(toy_calibration(step_per_row_s=1e-4, call_s=1e-3)), microbatches=2)
    assert m == 2 and c == best.layout.chunks > 1 and chooser.startswith("the performance model")


def test_the_model_chooses_what_it_predicts_fastest(tmp_path):
    # A fixed cost per call makes many microbatches expensive; cheap calls favour a smaller bubble.
    for call_s, expected_more in ((1.0, False), (0.0, True)):
        path = toy(tmp_path, step_per_row_s=1e-4, call_s=call_s)
        cfg = load_config(None, [f"parallel.calibration={path}", "parallel.sp=2", "data.batch_size=32"])
        grid = Grid(2, dp=1, sp=2)
        m, c, _ = modelled_counts(cfg, grid, 256, None)
        best = best_microbatches(Shape.from_config(cfg, 256), dict(dp=1, sp=2, pp=1, tp=1),
                                 Calibration(toy_calibration(step_per_row_s=1e-4, call_s=call_s)))
        assert (m, c) == (best.layout.microbatches, best.layout.chunks)
        assert (m > 2) == expected_more


def test_hand_set_counts_are_kept_and_a_missing_file_is_a_config_error(tmp_path):
    path = toy(tmp_path, step_per_row_s=1e-4)
    cfg = load_config(None, [f"parallel.calibration={path}", "parallel.microbatches=5", "parallel.chunks=2",
                             "parallel.pp=2"])
    assert modelled_counts(cfg, Grid(2, dp=1, pp=2), 256, None) == (5, 2, "")
    cfg = load_config(None, [f"parallel.calibration={tmp_path / 'none.json'}", "parallel.sp=2"])
    with pytest.raises(ConfigError, match="parallel.calibration"):
        modelled_counts(cfg, Grid(2, dp=1, sp=2), 256, None)


def test_calibrations_are_found_by_the_precision_they_measured(tmp_path, monkeypatch):
    """A bf16 run plans with a calibration measured in bf16, a float32 run with a float32 one; each
    is named apart (docs/precision.md, "The performance model")."""
    monkeypatch.setenv(calibration_file.USER_DIR_VARIABLE, str(tmp_path))
    for precision, date in (("float32", "2026-01-01"), ("bf16", "2026-01-02")):
        data = toy_calibration(step_per_row_s=1e-4)
        data["host"] = {**data.get("host", {}), "cpu": "Test CPU", "device": "cpu", "precision": precision,
                        "date": date}
        (tmp_path / f"{precision}.json").write_text(json.dumps(data))
    assert calibration_file.find_for_host("Test CPU").name == "float32.json"
    assert calibration_file.find_for_host("Test CPU", precision="bf16").name == "bf16.json"
    assert calibration_file.find_for_host("Test CPU", precision="fp16") is None
    assert "-bf16-" in calibration_file.default_path("Test CPU", precision="bf16").name
    assert "bf16" not in calibration_file.default_path("Test CPU").name


def test_a_bf16_run_without_a_bf16_calibration_takes_the_rules_and_says_how_to_measure_one(monkeypatch):
    asked = []
    monkeypatch.setattr(calibration_file, "find_for_host", lambda cpu, cell, hidden, precision: asked.append(precision))
    cfg = load_config(None, ["parallel.sp=2", "train.device=cpu", "train.precision=bf16"])
    m, c, chooser = modelled_counts(cfg, Grid(2, dp=1, sp=2), 256, None)
    assert asked == ["bf16"] and (m, c) == (0, 0)
    assert "no bf16 calibration of this CPU" in chooser and "--calibrate --precision bf16" in chooser
