"""Labelled rows of different lengths on three axes at once, at -n 8: still the reference that
never sees a padded step (tests/labelled_exactness.py), every cell, float64.

    mpirun -n 8 python -m pytest --with-mpi -m mpi tests/mpi8     (make test runs it)
"""

from __future__ import annotations

import pytest
from mpi4py import MPI

from exactness import CELLS
from labelled_exactness import check_labelled

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

COMPOSED = [(2, 2, 1, 2), (1, 2, 2, 2), (2, 1, 2, 2)]  # (dp, sp, pp, tp)


@pytest.mark.parametrize("task", ["tag", "classify"])
@pytest.mark.parametrize("cell", CELLS)
def test_three_axes(cell, task):
    if MPI.COMM_WORLD.size != 8:
        pytest.skip("these grids need exactly 8 ranks: mpirun -n 8")
    check_labelled(cell, task, layers=3, grid_list=COMPOSED, chunks=2 if cell in ("rnn", "lstm", "gru") else 0)
