"""Where calibrations are found, and `python -m mpirnn.plan` on a CPU without one: it calibrates
what the config needs, says so with the expected time, stores the file in the user's folder and
ranks with it; the next call uses the stored file.

    .venv/bin/python -m pytest -q tests/test_plan_calibrates.py     # about a minute (one real calibration)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from test_perf_model import toy_calibration

from mpirnn.perf import calibration as calibration_file

SMALL = ["--set", "model.cell=lstm", "--set", "model.hidden=32", "--set", "model.layers=2",
         "--set", "model.embed=16", "--set", "data.batch_size=8", "--set", "data.seq_len=64"]


def write(folder, name, cpu, date, **extra):
    data = {**toy_calibration(), **extra}
    data["host"] = {**data["host"], "cpu": cpu, "device": "cpu", "date": date}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))
    return folder / name


def test_the_users_calibrations_come_first_and_the_shipped_can_be_hidden(tmp_path, monkeypatch):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    monkeypatch.setattr(calibration_file, "SHIPPED_DIR", shipped)
    monkeypatch.setenv("MPIRNN_CALIBRATION_DIR", str(user))
    monkeypatch.delenv("MPIRNN_SHIPPED_CALIBRATIONS", raising=False)
    newest_shipped = write(shipped, "b.json", "CPU X", "2026-12-01")
    write(shipped, "a.json", "CPU X", "2026-11-01")
    assert calibration_file.find_for_host("CPU X") == newest_shipped
    assert calibration_file.find_for_host("CPU Y") is None
    own = write(user, "mine.json", "CPU X", "2026-10-01")            # older, but the user's own
    assert calibration_file.find_for_host("CPU X") == own
    assert calibration_file.default_path("CPU X").parent == user      # new calibrations go there
    monkeypatch.setenv("MPIRNN_SHIPPED_CALIBRATIONS", "0")
    own.unlink()
    assert calibration_file.find_for_host("CPU X") is None


def test_a_calibration_restricted_to_a_config_covers_only_that_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIRNN_CALIBRATION_DIR", str(tmp_path))
    monkeypatch.setenv("MPIRNN_SHIPPED_CALIBRATIONS", "0")
    scoped = write(tmp_path, "lstm-32.json", "CPU X", "2026-12-01", scope={"cells": ["lstm"], "hidden": [32]})
    assert calibration_file.find_for_host("CPU X", "lstm", 32) == scoped
    assert calibration_file.find_for_host("CPU X", "lstm", 256) is None    # not measured: not guessed
    data = json.loads(scoped.read_text())
    del data["compute"]["fused"]["lstm"]
    scoped.write_text(json.dumps(data))
    assert calibration_file.find_for_host("CPU X", "lstm", 32) is None     # the cell was not measured


@pytest.mark.timeout(900)
def test_plan_on_an_uncalibrated_cpu_calibrates_once_then_uses_the_stored_file(tmp_path):
    folder = tmp_path / "calibrations"
    env = {**os.environ, "MPIRNN_CALIBRATION_DIR": str(folder), "MPIRNN_SHIPPED_CALIBRATIONS": "0"}

    def plan():
        return subprocess.run([sys.executable, "-m", "mpirnn.plan", "--ranks", "2", *SMALL], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=800)

    first = plan()
    assert first.returncode == 0, first.stderr
    assert re.search(r"no calibration of this CPU .* for lstm at hidden 32 .*calibrating lstm at hidden 32 now, "
                     r"expected about \d+ s", first.stderr), first.stderr
    assert "[2/2] communication done" in first.stderr     # progress, phase by phase
    (stored,) = folder.glob("*.json")
    data = json.loads(stored.read_text())
    assert data["scope"] == {"cells": ["lstm"], "hidden": [32]} and list(data["compute"]["fused"]) == ["lstm"]
    assert f"calibration: {stored}" in first.stdout and "| 1 |" in first.stdout   # the ranking, with that file

    second = plan()
    assert second.returncode == 0, second.stderr
    assert "calibrating" not in second.stderr and f"calibration: {stored}" in second.stdout
    assert list(folder.glob("*.json")) == [stored]
