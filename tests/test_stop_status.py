"""The exit status of a run stopped by a signal, and the note slurm/job.sh reads to requeue it.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_stop_status.py
"""

import signal
from types import SimpleNamespace

from mpirnn.training.loop import Trainer


def trainer(tmp_path, checkpoint_dir=True, local_rank=0):
    cfg = SimpleNamespace(checkpoint=SimpleNamespace(dir=str(tmp_path / "ckpt") if checkpoint_dir else ""))
    return SimpleNamespace(cfg=cfg, comms=SimpleNamespace(local_rank=local_rank), step=7, unsaved_step=None)


def test_under_mpirun_the_status_is_128_plus_the_signal(tmp_path, monkeypatch):
    monkeypatch.delenv("MPIRNN_STOP_FILE", raising=False)
    assert Trainer._stop_status(trainer(tmp_path), signal.SIGUSR1) == 138
    assert Trainer._stop_status(trainer(tmp_path), signal.SIGINT) == 130


def test_under_job_sh_a_saved_stop_exits_0_and_leaves_the_note(tmp_path, monkeypatch):
    note = tmp_path / ".mpirnn-stopped-42"
    monkeypatch.setenv("MPIRNN_STOP_FILE", str(note))
    assert Trainer._stop_status(trainer(tmp_path, local_rank=1), signal.SIGUSR1) == 0
    assert not note.exists()   # only each node's first rank writes it
    assert Trainer._stop_status(trainer(tmp_path), signal.SIGUSR1) == 0
    assert note.read_text() == "SIGUSR1 7\n"


def test_without_a_checkpoint_or_a_writable_note_the_status_says_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIRNN_STOP_FILE", str(tmp_path / "note"))
    # Nothing was saved: no note, and the plain 128 + signal.
    assert Trainer._stop_status(trainer(tmp_path, checkpoint_dir=False), signal.SIGUSR1) == 138
    assert not (tmp_path / "note").exists()
    monkeypatch.setenv("MPIRNN_STOP_FILE", str(tmp_path / "missing-folder" / "note"))
    assert Trainer._stop_status(trainer(tmp_path), signal.SIGUSR1) == 138


def test_a_stop_whose_checkpoint_could_not_be_written_is_not_a_clean_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIRNN_STOP_FILE", str(tmp_path / "note"))
    failed = trainer(tmp_path)
    failed.unsaved_step = 7  # a full disk at the stop's checkpoint: job.sh must not take it as saved
    assert Trainer._stop_status(failed, signal.SIGTERM) == 1
    assert not (tmp_path / "note").exists()
