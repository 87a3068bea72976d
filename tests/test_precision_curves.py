"""The bf16-against-float32 loss-curve comparison (mpirnn/tools/precision_curves.py): its smoothing and
gaps on hand-made curves, and the tool end to end on a small dataset.

    python -m pytest -q tests/test_precision_curves.py

End to end it trains float32 twice (every CPU runs that; bf16 is refused on one without native
bf16): two runs of the same config must give the same curve, so every gap is exactly zero.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpirnn.tools.precision_curves import compare, read_curve, smoothed
from support import make_series_dataset


def test_trailing_mean():
    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smoothed([2.0, 4.0], 10) == [2.0, 3.0]


def curve(losses, val=None):
    return {"steps": list(range(1, len(losses) + 1)), "loss": losses, "val": val or {}, "step_s": 0.5}


def test_gaps_are_relative_to_the_reference_over_the_second_half():
    reference = curve([4.0, 4.0, 2.0, 2.0], {4: 2.5})
    other = curve([4.0, 8.0, 2.0, 2.2], {4: 2.6})
    result = compare(reference, other, width=1)
    assert result["max_gap_second_half"] == pytest.approx(0.1)   # step 2's 100% lies in the first half
    assert result["final_gap"] == pytest.approx(0.1)
    assert result["val_step"] == 4 and result["val_loss"] == [2.5, 2.6]


def test_metrics_lines_read_as_a_curve(tmp_path):
    lines = [{"step": 1, "loss": 3.0, "step_time_s": 0.2}, {"step": 2, "loss": 2.0, "step_time_s": 0.4},
             {"step": 2, "val_loss": 2.5}, {"summary": True, "loss": 2.0}]
    metrics = tmp_path / "m.jsonl"
    metrics.write_text("\n".join(json.dumps(line) for line in lines))
    got = read_curve(metrics)
    assert got["steps"] == [1, 2] and got["loss"] == [3.0, 2.0] and got["val"] == {2: 2.5}
    assert got["step_s"] == pytest.approx(0.3)


@pytest.mark.timeout(240)
def test_the_same_precision_twice_gives_no_gap(tmp_path):
    data = make_series_dataset(tmp_path / "series")
    out = tmp_path / "curves.json"
    done = subprocess.run([sys.executable, "-m", "mpirnn.tools.precision_curves", "--np", "1", "--steps", "12",
                           "--precisions", "float32,float32", "--smooth", "3", "--out", str(out),
                           "--set", f"data.path={data}", "--set", "data.seq_len=32", "--set", "data.batch_size=4",
                           "--set", "model.hidden=16", "--set", "model.cell=gru"],
                          capture_output=True, text=True, timeout=230, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "curves").glob("*.jsonl")) == ["0-float32.jsonl", "1-float32.jsonl"]
    summary = json.loads(out.read_text())["summary"]
    assert summary["steps"] == 12 and summary["max_gap_second_half"] == 0.0 and summary["final_gap"] == 0.0
    assert "largest gap over the second half 0.00%" in done.stdout
