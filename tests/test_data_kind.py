"""Tokens or numbers, explicitly: --kind for a .npy, the inferred choice printed, contradictions refused.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_data_kind.py
"""

import subprocess
import sys

import numpy as np
import pytest

from mpirnn.data import __main__ as data_cli
from mpirnn.data.prepare import prepare_npy
from mpirnn.errors import DataError


def prepare_cli(capsys, npy, out, *extra) -> tuple[int, str, str]:
    status = data_cli.main(["prepare", "--out", str(out), "--npy", str(npy), *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_inferred_tokens_say_so_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "ids.npy", np.arange(100) % 5)
    status, out, _ = prepare_cli(capsys, tmp_path / "ids.npy", tmp_path / "ds")
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert status == 0 and notes == [
        "note: ids.npy is a 1-D int64 array: prepared as tokens (1-D integers are read as ids; "
        "pass --kind series to read them as numbers)"]
    assert "tokens: 90 steps, vocab_size=5" in out


@pytest.mark.parametrize("array, said", [
    (np.zeros(50), "a 1-D float64 array: prepared as a series (floats are numbers"),
    (np.zeros((50, 2), np.int32), "a 2-D int32 array: prepared as a series (more than 1-D"),
    (np.zeros((50, 3, 2)), "a 3-D float64 array: prepared as sequences [N, T, F]"),
])
def test_inferred_numbers_say_so(tmp_path, capsys, array, said):
    np.save(tmp_path / "x.npy", array)
    status, out, _ = prepare_cli(capsys, tmp_path / "x.npy", tmp_path / "ds")
    assert status == 0 and f"note: x.npy is {said}" in out


def test_kind_series_reads_integers_as_numbers(tmp_path, capsys):
    np.save(tmp_path / "counts.npy", np.arange(100))
    status, out, _ = prepare_cli(capsys, tmp_path / "counts.npy", tmp_path / "ds",
                                 "--kind", "series")
    assert status == 0 and "note:" not in out   # chosen, not inferred: nothing to explain
    assert "series: 90 steps, features=1" in out


def test_kind_tokens_on_integers_is_as_inferred(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(100) % 5)
    manifest = prepare_npy(tmp_path / "ids.npy", tmp_path / "ds", kind="tokens")
    assert (manifest.kind, manifest.vocab_size) == ("tokens", 5)


@pytest.mark.parametrize("array, message", [
    (np.arange(10) * 0.5, r"--kind tokens: x.npy is a 1-D float64 array, but token ids must be "
                          r"integers: use --kind series for numbers"),
    (np.arange(10.0), "token ids must be integers"),   # integral floats are still floats
    (np.zeros((10, 2), np.int64), r"tokens are one 1-D stream of ids: flatten it"),
])
def test_contradictions_are_refused(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=message):
        prepare_npy(tmp_path / "x.npy", tmp_path / "ds", kind="tokens")
    assert not (tmp_path / "ds").exists()


def test_vocab_size_with_numbers_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(10))
    with pytest.raises(DataError, match="--vocab-size applies to tokens.*drop --vocab-size"):
        prepare_npy(tmp_path / "x.npy", tmp_path / "ds", kind="series", vocab_size=10)


def test_cli_kind_only_for_npy_and_one_line_on_contradiction(tmp_path):
    np.save(tmp_path / "x.npy", np.ones(20))
    (tmp_path / "x.csv").write_text("a\n1\n")
    base = [sys.executable, "-m", "mpirnn.data", "prepare", "--out", str(tmp_path / "ds")]
    wrong = subprocess.run(base + ["--npy", str(tmp_path / "x.npy"), "--kind", "tokens"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert wrong.stderr.startswith("mpirnn.data: --kind tokens: x.npy is a 1-D float64 array")
    csv = subprocess.run(base + ["--csv", str(tmp_path / "x.csv"), "--columns", "a", "--kind",
                                 "series"], capture_output=True, text=True, timeout=60)
    assert csv.returncode == 2 and "--kind only applies with --npy" in csv.stderr
