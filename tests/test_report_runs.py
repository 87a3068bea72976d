"""`python -m mpirnn.report` on one run (its folder or its metrics file) and on a folder of unrelated runs.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_report_runs.py

The metrics files are built by hand, except in the last test: a real 3-step training run,
then the real command as a subprocess, as a new user would type it.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
from support import make_token_dataset
from test_perf_model import toy_calibration

from mpirnn.tools import report
from mpirnn.perf.calibration import Calibration
from mpirnn.perf.step_model import Layout, Shape, predict

PNG = b"\x89PNG\r\n\x1a\n"


def write_metrics(folder, hidden=16, dp=1, step_time=0.5, val=False, lr=False, name="metrics", finished=True,
                  threads=None, cpu=None, comm=None):
    """A run as the trainer leaves it: metrics lines, a summary, and the resolved config beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"step": s, "loss": 5.0 - 0.2 * s, "step_time_s": step_time, "tokens_per_s": 512 / step_time,
              "comm_time_s": sum(comm) if comm else 0.0, "grad_norm": 1.0 / s,
              **({"comm_wait_s": comm[0], "comm_collective_s": comm[1]} if comm else {}), **({"val_loss": 5.1 - 0.2 * s} if val and s % 2 == 0 else {}),
              **({"lr": 0.003} if lr else {})} for s in range(1, 7)]
    if finished:
        lines.append({"summary": True, "steps": 6, "first_loss": 4.8, "final_loss": 3.8, "tokens_per_s": 1000.0,
                      "grid": {"dp": dp, "sp": 1, "pp": 1, "tp": 1}, "world_size": dp,
                      "placement": [{"rank": r, "host": "h1", "threads": threads, "cpu": cpu, "device": "cpu"}
                                    for r in range(dp)]})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    config = {"model": {"cell": "lstm", "hidden": hidden, "layers": 1, "embed": 8, "dtype": "float32"},
              "data": {"path": "data/tokens", "seq_len": 16, "batch_size": 32, "validate": True},
              "parallel": {"dp": dp, "sp": 1, "pp": 1, "tp": 1}, "train": {"steps": 6, "lr": 0.003}}
    (folder / f"{name}.config.json").write_text(json.dumps(config))
    return path


def test_single_run_folder_gets_curves_and_a_summary(tmp_path, capsys):
    run = tmp_path / "runs" / "default"
    write_metrics(run, val=True, lr=True)
    assert report.main([str(run)]) == 0
    for curve in ("loss", "grad_norm", "tokens_per_s", "lr"):
        assert (run / f"{curve}.png").read_bytes()[:8] == PNG, curve
    summary = (run / "report.md").read_text()
    assert "# Run default" in summary
    assert "loss: 4.8000 at step 1 -> 3.8000 at step 6" in summary
    assert "val_loss: 4.7000 -> 3.9000" in summary
    assert "median step time: 0.5 s" in summary and "tokens/s: 1024 median per step" in summary
    assert "grid (dp x sp x pp x tp): 1x1x1x1" in summary
    assert "no finished runs" not in capsys.readouterr().err


def test_single_run_without_lr_or_val_draws_only_what_it_has(tmp_path):
    write_metrics(tmp_path / "run")
    assert report.main([str(tmp_path / "run")]) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("*.png")) == ["grad_norm.png", "loss.png",
                                                                         "tokens_per_s.png"]


def test_metrics_file_path_works_and_names_outputs_after_it(tmp_path):
    path = write_metrics(tmp_path / "run", name="m")
    assert report.main([str(path)]) == 0
    assert (tmp_path / "run" / "m-loss.png").read_bytes()[:8] == PNG
    assert "# Run m" in (tmp_path / "run" / "m-report.md").read_text()


def test_unfinished_single_run_is_drawn_and_says_so(tmp_path):
    write_metrics(tmp_path / "run", finished=False)
    assert report.main([str(tmp_path / "run")]) == 0
    assert "unfinished" in (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "loss.png").exists()


def test_folder_holding_one_nested_run_reports_that_run(tmp_path):
    write_metrics(tmp_path / "runs" / "default")
    assert report.main([str(tmp_path / "runs")]) == 0
    assert (tmp_path / "runs" / "default" / "loss.png").exists()


def test_unrelated_runs_are_not_one_study_and_are_named(tmp_path, capsys):
    write_metrics(tmp_path / "runs" / "small", hidden=16, step_time=0.1)
    write_metrics(tmp_path / "runs" / "big", hidden=256, dp=2, step_time=0.8)
    assert report.main([str(tmp_path / "runs")]) == 0
    text = (tmp_path / "runs" / "report.md").read_text()
    assert "Scaling study" not in text and "speedup" not in text
    assert "| small |" in text and "| big |" in text
    rows = list(csv.DictReader((tmp_path / "runs" / "report.csv").open()))
    assert sorted(r["run"] for r in rows) == ["big", "small"]
    assert all(r["study"] == "" and r["speedup"] == "" for r in rows)
    assert not (tmp_path / "runs" / "speedup.png").exists()
    assert (tmp_path / "runs" / "loss.png").read_bytes()[:8] == PNG  # one curve per run, named in the legend
    assert "small" in capsys.readouterr().out


def test_same_problem_on_two_grids_is_a_study_and_others_stay_apart(tmp_path):
    write_metrics(tmp_path / "lstm-dp1", dp=1, step_time=1.0)
    write_metrics(tmp_path / "lstm-dp2", dp=2, step_time=0.6)
    write_metrics(tmp_path / "lstm-dp2-again", dp=2, step_time=0.6, hidden=32)  # another model: on its own
    assert report.main([str(tmp_path)]) == 0
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert rows["lstm-dp1"]["study"] == rows["lstm-dp2"]["study"] == "lstm 1x16, batch 32 x 16"
    assert float(rows["lstm-dp2"]["speedup"]) == pytest.approx(1 / 0.6)
    assert float(rows["lstm-dp2"]["efficiency"]) == pytest.approx(1 / 1.2)
    assert rows["lstm-dp2-again"]["study"] == ""
    text = (tmp_path / "report.md").read_text()
    assert "against lstm-dp1" in text and "## Runs not in a study" in text
    assert (tmp_path / "speedup.png").stat().st_size > 1000


def toy_file(tmp_path):
    path = tmp_path / "toy-calibration.json"
    path.write_text(json.dumps(toy_calibration(step_per_row_s=1e-3, adam_param_s=1e-6)))
    return path


def test_every_run_gets_the_models_step_time_beside_its_measured_one(tmp_path):
    runs = tmp_path / "runs"
    write_metrics(runs / "dp1", dp=1, step_time=1.0, threads=1, cpu="toy")
    write_metrics(runs / "dp2", dp=2, step_time=0.6, threads=1, cpu="toy")
    assert report.main([str(runs), "--calibration", str(toy_file(tmp_path))]) == 0
    rows = {r["run"]: r for r in csv.DictReader((runs / "report.csv").open())}
    cal = Calibration(toy_calibration(step_per_row_s=1e-3, adam_param_s=1e-6))
    shape = Shape("lstm", layers=1, hidden=16, embed=8, batch=32, seq_len=16, vocab=256)
    for name, dp, measured in (("dp1", 1, 1.0), ("dp2", 2, 0.6)):
        expected = predict(shape, Layout(dp=dp), cal).step_s
        assert float(rows[name]["predicted_step_s"]) == pytest.approx(expected)
        assert float(rows[name]["prediction_error"]) == pytest.approx(measured / expected - 1)
    assert float(rows["dp1"]["predicted_step_s"]) > float(rows["dp2"]["predicted_step_s"]) > 0
    text = (runs / "report.md").read_text()
    assert "predicted_step_s | vs_predicted" in text and "toy-calibration.json" in text


def test_runs_the_model_does_not_describe_say_why(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_metrics(runs / "threads", dp=1, threads=2, cpu="toy")
    write_metrics(runs / "one", dp=2, threads=1, cpu="toy")
    assert report.main([str(runs), "--calibration", str(toy_file(tmp_path))]) == 0
    assert "No predicted step time for: threads (calibrated for 1 thread per rank)" in (runs / "report.md").read_text()
    # No --calibration and none of the runs' CPU model: the report says so and still has its tables.
    assert report.main([str(runs)]) == 0
    text = (runs / "report.md").read_text()
    assert "No predicted step times: no calibration of toy" in text and "## Scaling study" in text


def test_the_time_in_mpi_is_shown_with_its_two_parts(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, step_time=0.5, comm=(0.1, 0.05))
    assert report.main([str(run)]) == 0
    summary = (run / "report.md").read_text()
    assert "- time in MPI: 30% of the median step (waiting for neighbours' messages 20%, in collectives 10%)" \
        in summary
    older = tmp_path / "older"   # metrics from before the split: the total only
    write_metrics(older, step_time=0.5)
    assert report.main([str(older)]) == 0
    assert "- time in MPI: 0% of the median step\n" in (older / "report.md").read_text()


def test_missing_path_fails_clearly(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_report_command_on_a_real_training_run(tmp_path):
    data = make_token_dataset(tmp_path / "tokens")
    run = tmp_path / "run"
    settings = {"train.steps": 3, "model.hidden": 16, "model.layers": 1, "model.embed": 8, "data.seq_len": 16,
                "data.batch_size": 4, "output.progress": "false", "output.sample_bytes": 0, "data.path": data,
                "output.metrics": run / "metrics.jsonl", "train.threads": 1}
    train = subprocess.run([sys.executable, "-m", "mpirnn.train",
                            *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]],
                           cwd=tmp_path, capture_output=True, text=True, timeout=150, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stderr
    shown = subprocess.run([sys.executable, "-m", "mpirnn.report", str(run), "--calibration", str(toy_file(tmp_path))],
                           cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "# Run run" in shown.stdout and "no finished runs" not in shown.stderr
    for curve in ("loss", "grad_norm", "tokens_per_s"):
        assert (run / f"{curve}.png").read_bytes()[:8] == PNG, curve
    summary = (run / "report.md").read_text()
    assert "steps: 3 of 3" in summary and "grid (dp x sp x pp x tp): 1x1x1x1 on 1 rank(s)" in summary
    assert "model: lstm 1x16" in summary
    assert "predicted step time: " in summary and "s by the performance model (measured " in summary
    assert "- time in MPI: 0% of the median step (waiting for neighbours' messages 0%, in collectives 0%)" in summary
