"""Prepare sharded HDF5 datasets: the Python API behind `python -m mpirnn.data prepare`.

    prepare_text, prepare_stdlib_corpus   text files as byte tokens            (corpus.py)
    prepare_csv                           CSV columns as a series or windows   (csv_input.py)
    prepare_npy                           a .npy array: tokens or numbers      (npy_input.py)

Each writes the train split and, unless val_fraction=0 (default DEFAULT_VAL_FRACTION), a
val split of the final fraction (splits.py); validates what it wrote; and writes
manifest.json last, atomically: an interrupted prepare leaves no manifest, hence nothing
that looks like a usable dataset. docs/data.md describes the format and the options.
Try it: python -m mpirnn.data prepare --out /tmp/ds --npy x.npy
"""

from __future__ import annotations

from mpirnn.data.corpus import prepare_stdlib_corpus, prepare_text
from mpirnn.data.csv_input import prepare_csv
from mpirnn.data.fill import FILL_METHODS
from mpirnn.data.npy_input import NPY_KINDS, prepare_npy
from mpirnn.data.shard_writer import PathLike, ShardWriter, default_shard_size
from mpirnn.data.splits import DEFAULT_VAL_FRACTION

__all__ = ["prepare_text", "prepare_stdlib_corpus", "prepare_csv", "prepare_npy",
           "DEFAULT_VAL_FRACTION", "FILL_METHODS", "NPY_KINDS", "PathLike", "ShardWriter",
           "default_shard_size"]
