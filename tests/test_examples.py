"""The labelled examples end to end, shortened: JapaneseVowels (inputs/japanese-vowels.sh),
espeak-ng spoken words (inputs/spoken-words.sh, also with BIDIRECTIONAL=0 and CELL=lstm) and per-frame speech
activity (inputs/speech-activity.sh), each run as a user runs it, with fewer training steps
(STEPS) and less speech (RENDITIONS: one reading of the list per voice; UTTERANCES).
They check that the command completes and prints an accuracy and its baselines, not the
accuracy itself (the README has the full runs' numbers). About 22 s for the first two on 2
cores; all four took 211 s together on 2026-12-06 while other runs shared the two cores.
They write where a user's run does (data/, runs/), replacing a full run's dataset and
checkpoints.

    .venv/bin/python -m pytest -q tests/test_examples.py
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from mpirnn.data.bundled import aeon_ts

ROOT = pathlib.Path(__file__).resolve().parents[1]
MPIRUN = pathlib.Path(sys.executable).parent / "mpirun"
needs_mpirun = pytest.mark.skipif(not MPIRUN.exists(),
                                  reason=f"{MPIRUN} is missing: run make setup")


def run_example(script: str, **env) -> str:
    result = subprocess.run(["bash", str(ROOT / "inputs" / script)], cwd=ROOT,
                            env={**os.environ, "PYTHON": sys.executable, **env},
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def accuracy(out: str) -> float:
    found = re.search(r"^val accuracy (\d\.\d{4}) \((\d+) of (\d+) rows right", out, re.M)
    assert found, out[-2000:]
    return float(found.group(1))


@needs_mpirun
@pytest.mark.skipif(aeon_ts("JapaneseVowels") is None,
                    reason="aeon's wheel is not installed (make setup): no JapaneseVowels")
def test_japanese_vowels_example_runs():
    out = run_example("japanese-vowels.sh", STEPS="60")
    assert 0.0 <= accuracy(out) <= 1.0
    assert "of 370 rows right" in out
    assert "majority-class baselines" in out and "0.0838" in out and "0.2378" in out
    assert "published UEA archive result" in out


@needs_mpirun
@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_spoken_words_example_runs():
    out = run_example("spoken-words.sh", STEPS="20", RENDITIONS="1")
    assert "1440 train WAVs (80 voices) and 288 val WAVs (16 held-out voices" in out
    assert "the rows of val" in out                  # the val split is the held-out voices
    assert 0.0 <= accuracy(out) <= 1.0 and "of 288 rows right" in out
    assert "majority-class baselines" in out and "0.0556" in out


@needs_mpirun
@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
@pytest.mark.parametrize("env, run", [({"BIDIRECTIONAL": "0"}, "spoken-words-forward"),
                                      ({"CELL": "lstm"}, "spoken-words-bilstm")])
def test_spoken_words_other_encoders_run(env, run):
    """The one-direction GRU (BIDIRECTIONAL=0) and the BiLSTM config (CELL=lstm), each in its own run."""
    out = run_example("spoken-words.sh", STEPS="10", RENDITIONS="1", **env)
    assert f"runs/{run}/metrics.jsonl" in out
    assert 0.0 <= accuracy(out) <= 1.0 and "of 288 rows right" in out


@needs_mpirun
@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_speech_activity_example_runs():
    out = run_example("speech-activity.sh", STEPS="6", UTTERANCES="40")
    assert "40 utterances" in out and "task tag: one of 2 classes per time step (silence, speech)" in out
    found = re.search(r"accuracy (\d\.\d{4}), macro-F1 (\d\.\d{4})", out)
    assert found and 0.0 <= float(found.group(1)) <= 1.0, out[-2000:]
    assert "baseline, always 'silence'" in out and "baseline, frame energy above" in out
