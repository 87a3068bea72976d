"""Bidirectional layers on three axes at once, at -n 8: sequence parallelism (the two opposite
wavefronts, or the two cross-rank scans) with data, pipeline and tensor parallelism, on rows of
different lengths, against PyTorch's packed bidirectional module (each row alone for the linear
cells): every cell, per-step and per-sequence labels, float64 (tests/bidirectional_exactness.py).

    mpirun -n 8 python -m pytest --with-mpi -m mpi tests/mpi8     (make test runs it)
"""

from __future__ import annotations

import pytest
from mpi4py import MPI

from bidirectional_exactness import check_bidirectional
from exactness import CELLS

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

COMPOSED = [(2, 2, 1, 2), (1, 2, 2, 2), (2, 2, 2, 1)]  # (dp, sp, pp, tp)


@pytest.mark.parametrize("task", ["tag", "classify"])
@pytest.mark.parametrize("cell", CELLS)
def test_three_axes(cell, task):
    if MPI.COMM_WORLD.size != 8:
        pytest.skip("these grids need exactly 8 ranks: mpirun -n 8")
    assert check_bidirectional(cell, task, layers=3, grid_list=COMPOSED) == COMPOSED
