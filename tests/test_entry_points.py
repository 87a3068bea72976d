"""The commands a user types: the embedded default, example configs, the config listing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from mpirnn.config import load_config

MPIRUN = str(Path(sys.executable).with_name("mpirun"))


@pytest.mark.parametrize("config", sorted((ROOT / "inputs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load(config):
    load_config(config)


def test_config_listing_documents_every_key():
    out = subprocess.run([sys.executable, "-m", "mpirnn.config"], capture_output=True, text=True, check=True).stdout
    keys = [line for line in out.splitlines() if "=" in line]
    assert len(keys) > 30 and all("#" in line for line in keys)


@pytest.mark.timeout(180)
def test_embedded_default_runs_from_an_empty_directory(tmp_path):
    """What `make demo` runs, shortened: prepares the stdlib corpus, trains, reports, samples."""
    run = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-m", "mpirnn.train", "--set", "train.steps=3",
                          "--set", "output.sample_bytes=40"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr
    assert "preparing the default corpus" in run.stderr
    assert "loss " in run.stdout and "sample:\ndef " in run.stdout
    records = [json.loads(line) for line in (tmp_path / "runs/default/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records[:-1]] == [1, 2, 3]
    assert all({"loss", "step_time_s", "tokens_per_s", "comm_time_s"} <= set(r) for r in records[:-1])
    summary = records[-1]
    assert summary["summary"] and summary["world_size"] == 2 and len(summary["placement"]) == 2
    assert (tmp_path / "runs/default/metrics.config.json").exists()
