"""Every grid gives the serial loss and gradients, on every rank.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_exact_step.py   (K = 1, 2, 3, 4)

The batch (6 rows) and sequence (23 steps) divide by none of 2, 3, 4, and the
microbatch counts do not divide the rows, so every uneven split is exercised. Each test
runs every valid dp x sp x pp x tp factorization of the world size (tests/exactness.py).
"""

from __future__ import annotations

import pytest
import torch

import exactness
from exactness import CELLS, check
from mpirnn.models.series_head import SeriesOutputs

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]


@pytest.mark.parametrize("cell", CELLS)
def test_float64_two_layers(cell):
    check(cell)


@pytest.mark.parametrize("cell", CELLS)
def test_float32(cell):
    check(cell, dtype=torch.float32, layers=1)


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_carried_state_and_series(cell):
    check(cell, tokens=False, random_state=True)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_cells_long_segments(cell, dtype):
    # Segments of 150-601 steps: the incoming state's effect fades inside them, so each rank
    # corrects only a prefix of its zero-start scan (parallel.linear_scan.SegmentScan): still exact.
    check(cell, dtype=dtype, layers=2, random_state=True, steps=601)


@pytest.mark.parametrize("microbatches", [1, 2, 3])
def test_microbatches_not_dividing_rows(microbatches):
    check("gru", microbatches=microbatches)


@pytest.mark.parametrize("cell", CELLS)
def test_pipeline_stages_uneven_with_chunks(cell):
    # 4 layers over pp = 3 stages is uneven (2, 1, 1); chunks = 4 do not divide the 23 steps or
    # the segments, and at -n 4 pp = 4 gives every stage one layer.
    check(cell, layers=4, chunks=4)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layers_one_at_a_time_along_the_sequence_chain(cell):
    # With sp > 1 a unit runs its layers one at a time, each sending its own boundary state
    # (parallel.wavefront): 3 layers give stages of 2 and 1 layers at sp=2 x pp=2 (-n 4), three
    # groups per unit at sp = 2, 3, 4, and 2 chunks make only the last chunk's states travel.
    check(cell, layers=3, chunks=2, random_state=True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru"])
def test_batch_size_one_with_chunks(cell):
    # One long sequence: the only parallelism for nonlinear cells is the pipeline over time chunks.
    rows, exactness.ROWS = exactness.ROWS, 1
    try:
        check(cell, layers=4, chunks=5, random_state=True, microbatches=1)
    finally:
        exactness.ROWS = rows


@pytest.mark.parametrize("arrived", [False, True], ids=["all-ahead", "all-as-units-come"])
def test_loss_backward_ahead_or_as_units_come(arrived, monkeypatch):
    # parallel.wavefront runs the loss's backward ahead of the state gradients until the first
    # one arrives, the rest as their units come: both extremes give the serial step.
    from mpirnn.distributed import transport
    real = transport.Transfer.arrived

    def arrived_now(self):
        real(self)   # Test() as the executor does: a completed request is then REQUEST_NULL
        return arrived
    monkeypatch.setattr(transport.Transfer, "arrived", arrived_now)
    check("lstm", layers=3, chunks=2, microbatches=2, random_state=True)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_masks_are_the_same_on_every_grid(cell):
    # Dropout between 3 layers, keyed on global rows and steps (mpirnn/models/dropout.py): every
    # grid draws the serial run's masks, so loss and gradients stay exact; chunks cut the segments.
    check(cell, layers=3, dropout=0.4, chunks=2 if cell in ("rnn", "lstm", "gru") else 0)


QUANTILE_HEADS = {"quantiles": dict(quantiles=(0.1, 0.5, 0.9)), "horizon": dict(horizon=6),
                  "both": dict(horizon=6, quantiles=(0.1, 0.5, 0.9))}


@pytest.mark.parametrize("head", QUANTILE_HEADS, ids=list(QUANTILE_HEADS))
@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_quantile_and_horizon_heads(cell, head):
    # The pinball loss and the direct multi-step head (every step scored 1 step ahead, the origins
    # 23 - 6k also 2-6 steps ahead, read past the end of the segment or chunk that holds them): sums
    # over the scored terms divided by their global count, so every grid gives the serial loss and
    # gradients; chunks cut the segments.
    check(cell, tokens=False, layers=3, chunks=2 if cell == "lstm" else 0,
          predicts=SeriesOutputs(exactness.FEATURES, **QUANTILE_HEADS[head]))
