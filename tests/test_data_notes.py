"""Notes on how a run uses its data (mpirnn/data/notes.py): plain pytest, no MPI."""

from pathlib import Path

import numpy as np

from mpirnn.config import load_config
from mpirnn.data.manifest import load_manifest
from mpirnn.data.notes import usage_notes
from mpirnn.data.prepare import prepare_npy


def rows_dataset(tmp_path: Path) -> Path:
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).standard_normal((20, 50, 2)).astype(np.float32))
    prepare_npy(tmp_path / "rows.npy", tmp_path / "rows", val_fraction=0.0)
    return tmp_path / "rows"


def test_a_shorter_seq_len_says_how_much_of_each_row_is_used(tmp_path):
    manifest = load_manifest(rows_dataset(tmp_path))
    notes = usage_notes(manifest, load_config(None, ["data.seq_len=24"]))
    assert notes == ["mpirnn: note: data.seq_len = 24 uses the first 25 of the 50 steps of each row (50%); "
                     "set data.seq_len = 49 to use whole rows"]
    assert usage_notes(manifest, load_config(None, ["data.seq_len=49"])) == []


def test_stateful_on_independent_rows_is_warned(tmp_path):
    manifest = load_manifest(rows_dataset(tmp_path))
    notes = usage_notes(manifest, load_config(None, ["data.seq_len=49", "train.stateful=true"]))
    assert len(notes) == 1 and "independent rows" in notes[0]
