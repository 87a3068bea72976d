"""Three axes at once, at -n 8 (oversubscribed on small machines; tiny shapes): still the serial step.

    mpirun -n 8 python -m pytest --with-mpi -m mpi tests/mpi8     (make test runs it)

dp2 x sp2 x tp2 and sp2 x pp2 x tp2 (and dp2 x pp2 x tp2): under sp the boundary states are tp
slices travelling to their own neighbour, one layer at a time; under pp every stage is tp-sliced
(3 layers: stages of 2 and 1). Every cell, float64.
"""

from __future__ import annotations

import pytest
from mpi4py import MPI

from exactness import CELLS, check

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

COMPOSED = [(2, 2, 1, 2), (1, 2, 2, 2), (2, 1, 2, 2)]  # (dp, sp, pp, tp)


@pytest.mark.parametrize("cell", CELLS)
def test_three_axes_with_tensor_parallelism(cell):
    if MPI.COMM_WORLD.size != 8:
        pytest.skip("these grids need exactly 8 ranks: mpirun -n 8")
    check(cell, grid_list=COMPOSED, layers=3, random_state=True, chunks=2 if cell in ("rnn", "lstm", "gru") else 0)
