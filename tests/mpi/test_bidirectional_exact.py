"""Bidirectional layers on rows of different lengths: every grid gives the loss and gradients of a
reference that never sees a padded step (PyTorch's stacked bidirectional module over
pack_padded_sequence for rnn/lstm/gru, each row alone in both directions for the linear cells),
on every rank, in float64 (tests/bidirectional_exactness.py); sequence parallelism included
(sp = 2, 3, 4 and sp x dp, sp x pp, sp x tp at -n 4), with rows whose last valid step lies in an
earlier segment, so that later segments are all padding for them. Time chunks are refused before
compute. A mutated reverse chain (its state dropped, or sent the way of the forward one) must
fail the same comparison. Pipelines whose upper stage does more work run some reverse directions
on the stage below (offloaded, mpirnn/parallel/plan.py); they too equal the reference, and
dropping the weight gradients the stage below sends back must fail it.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_bidirectional_exact.py   (K = 1, 2, 3, 4)
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bidirectional_exactness import (check_bidirectional, check_gradients_differ, check_mutation_fails, check_refused,
                                     offloading_grids, world)
from exactness import CELLS, grids
from mpirnn.parallel import bidirectional_scan, bidirectional_wavefront, reverse_offload
from mpirnn.parallel.bidirectional_schedule import FORWARD, REVERSE

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]


@pytest.mark.parametrize("task", ["tag", "classify", "regress"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_task_and_cell_on_every_grid(cell, task):
    checked = check_bidirectional(cell, task)
    assert checked
    if world.size > 1:
        assert any(g[1] == world.size for g in checked)   # sp = 2, 3, 4 on its own


@pytest.mark.parametrize("cell", ["lstm", "minlstm"])
def test_uneven_stages_and_microbatches(cell):
    # 3 layers over the stages, 3 microbatches over the rows: rows end at different steps in every microbatch.
    check_bidirectional(cell, "classify", layers=3, microbatches=3)


@pytest.mark.parametrize("cell", ["gru", "minlstm"])
def test_sequence_parallel_tagging_with_uneven_stages(cell):
    # sp with 3 layers over 2 stages and 3 microbatches (at -n 4: sp x pp), per-step labels
    shapes = [g for g in grids(3) if g[1] > 1] or None
    check_bidirectional(cell, "tag", layers=3, microbatches=3, grid_list=shapes)


@pytest.mark.parametrize("cell", ["gru", "mingru"])
def test_time_chunks_are_refused(cell):
    check_refused(cell)


def _sequence_grid():
    shapes = [g for g in grids(2) if g[1] > 1]
    if not shapes:
        pytest.skip("needs a grid with parallel.sp > 1 (mpirun -n 2 or more)")
    return max(shapes, key=lambda g: g[1])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("mutation", ["dropped", "wrong way"])
def test_a_mutated_reverse_chain_fails(cell, mutation, monkeypatch):
    original = bidirectional_wavefront.BidirectionalWavefront._state_peer

    def mutated(self, task, sending):
        if task.direction != REVERSE:
            return original(self, task, sending)
        if mutation == "dropped":   # every segment starts its reverse direction from the initial state
            return None
        return original(self, replace(task, direction=FORWARD), sending)   # s -> s+1, as the forward states

    monkeypatch.setattr(bidirectional_wavefront.BidirectionalWavefront, "_state_peer", mutated)
    check_mutation_fails(cell, "classify", _sequence_grid())


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("mutation", ["dropped", "wrong way"])
def test_a_mutated_reverse_scan_fails(cell, mutation, monkeypatch):
    original = bidirectional_scan.reverse_incoming

    def mutated(gathered, segment):
        if mutation == "dropped":   # the later segments' summaries never reach this one
            return gathered[-1, 2]
        # folded from the first segment on, as the forward direction's states are
        return original(torch.flip(gathered, [0]), gathered.shape[0] - 1 - segment)

    monkeypatch.setattr(bidirectional_scan, "reverse_incoming", mutated)
    check_mutation_fails(cell, "tag", _sequence_grid())


@pytest.mark.parametrize("task", ["tag", "classify"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_offloaded_reverse_directions_equal_the_reference(cell, task):
    # 2 layers: pp = 2 (one stage lends, one borrows); 3 layers and 3 microbatches: at -n 3 the
    # middle stage both borrows from the top stage and lends to the first; 4 layers: at pp = 2 two
    # layers per stage (the lent direction reads the lower stage's top layer, and the upper
    # stage's second layer reads the borrowed direction).
    checked = []
    for layers, microbatches in ((2, 0), (3, 3), (4, 0)):
        shapes = offloading_grids(cell, layers, microbatches)
        if shapes:
            checked += check_bidirectional(cell, task, layers, microbatches, grid_list=shapes)
    if world.size == 1:
        assert not checked
        pytest.skip("a pipeline needs mpirun -n 2 or more")
    assert checked, f"no grid of {world.size} ranks offloaded a reverse direction"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dropping_the_offloaded_weight_gradients_fails(cell, monkeypatch):
    # The loss cannot see this mutation (the stage below's outputs are right): only the weights'
    # gradients can.
    found = [(layers, microbatches, shapes[0]) for layers, microbatches in ((2, 0), (3, 3))
             if (shapes := offloading_grids(cell, layers, microbatches))]
    if not found:
        pytest.skip(f"no grid of {world.size} rank(s) offloads a reverse direction (it needs parallel.pp > 1)")
    layers, microbatches, shape = found[0]
    monkeypatch.setattr(reverse_offload, "accumulate", lambda weights, grads: None)
    check_gradients_differ(cell, "tag", shape, layers, microbatches)
