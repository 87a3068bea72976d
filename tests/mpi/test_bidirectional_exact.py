"""Bidirectional layers on rows of different lengths: every supported grid gives the loss and
gradients of a reference that never sees a padded step (PyTorch's stacked bidirectional module
over pack_padded_sequence for rnn/lstm/gru, each row alone in both directions for the linear
cells), on every rank, in float64 (tests/bidirectional_exactness.py); every other grid is refused
before compute.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_bidirectional_exact.py   (K = 1, 2, 3, 4)
"""

from __future__ import annotations

import pytest

from bidirectional_exactness import check_bidirectional, check_refused
from exactness import CELLS

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]


@pytest.mark.parametrize("task", ["tag", "classify", "regress"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_task_and_cell_on_every_supported_grid(cell, task):
    assert check_bidirectional(cell, task)


@pytest.mark.parametrize("cell", ["lstm", "minlstm"])
def test_uneven_stages_and_microbatches(cell):
    # 3 layers over the stages, 3 microbatches over the rows: rows end at different steps in every microbatch.
    check_bidirectional(cell, "classify", layers=3, microbatches=3)


@pytest.mark.parametrize("cell", ["gru", "mingru"])
def test_unsupported_grids_are_refused(cell):
    check_refused(cell)
