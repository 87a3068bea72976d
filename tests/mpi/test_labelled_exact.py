"""Labelled tasks on rows of different lengths: every grid gives the loss and gradients of a
reference that never sees a padded step (PyTorch's pack_padded_sequence for rnn/lstm/gru, each
row alone for the linear cells), on every rank, in float64 (tests/labelled_exactness.py).

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_labelled_exact.py   (K = 1, 2, 3, 4)
"""

from __future__ import annotations

import pytest

from exactness import CELLS
from labelled_exactness import check_labelled

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]


@pytest.mark.parametrize("task", ["tag", "classify", "regress"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_task_and_cell_on_every_grid(cell, task):
    check_labelled(cell, task)


@pytest.mark.parametrize("task", ["tag", "classify"])
def test_class_weights(task):
    check_labelled("gru", task, weighted=True)


@pytest.mark.parametrize("cell", ["lstm", "minlstm"])
def test_uneven_stages_microbatches_and_chunks(cell):
    # 3 layers over the stages, 3 microbatches over the rows, 4 chunks per segment: many units
    # are all padding for their rows, and some rows end inside a chunk.
    check_labelled(cell, "classify", layers=3, microbatches=3, chunks=4 if cell == "lstm" else 0)
