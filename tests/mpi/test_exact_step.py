"""Every grid gives the serial loss and gradients, on every rank.

    mpirun -n K python -m pytest --with-mpi -m mpi tests/mpi/test_exact_step.py   (K = 1, 2, 3, 4)

The batch (6 rows) and sequence (23 steps) divide by none of 2, 3, 4, and the
microbatch counts do not divide the rows, so every uneven split is exercised.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from mpirnn.distributed.mesh import Comms
from mpirnn.parallel.grid import Grid, rows_of, segment_of
from mpirnn.models.model import RecurrentModel
from mpirnn.parallel.step import StepRunner
from support import TEST_DEVICE

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]

world = MPI.COMM_WORLD
CELLS = ["rnn", "lstm", "gru", "mingru", "minlstm"]
ROWS, STEPS, VOCAB, FEATURES = 6, 23, 11, 3
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def grid_shapes():
    n = world.size
    shapes = {(n, 1), (1, n)}
    if n == 4:
        shapes.add((2, 2))
    return sorted(shapes)


def make_model(cell, dtype, layers, tokens=True):
    torch.manual_seed(1234)
    model = RecurrentModel(cell, hidden=7, layers=layers, embed=5,
                           vocab_size=VOCAB if tokens else None, features=None if tokens else FEATURES)
    return model.to(device=TEST_DEVICE, dtype=dtype)


def make_batch(dtype, tokens=True, steps=STEPS):
    generator = torch.Generator().manual_seed(99)
    if tokens:
        data = torch.randint(0, VOCAB, (ROWS, steps + 1), generator=generator)
    else:
        data = torch.randn(ROWS, steps + 1, FEATURES, generator=generator, dtype=dtype)
    data = data.to(TEST_DEVICE)
    return data[:, :-1], data[:, 1:]


def initial_state(model, dtype, random):
    state = model.zero_state(ROWS, torch.empty(0, device=TEST_DEVICE))
    if random:  # a carried state (stateful mode); positive, as linear cells' states are
        generator = torch.Generator().manual_seed(5)
        state = torch.rand(state.shape, generator=generator, dtype=dtype).to(TEST_DEVICE) * 0.5 + 0.1
    return state


def serial(cell, dtype, layers, tokens, random_state, steps):
    model = make_model(cell, dtype, layers, tokens)
    inputs, targets = make_batch(dtype, tokens, steps)
    loss, final = model(inputs, targets, initial_state(model, dtype, random_state))
    loss = loss / targets.numel()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}, final.detach()


def parallel(cell, dtype, layers, tokens, random_state, dp, sp, microbatches, steps):
    comms = Comms.create(Grid(world.size, dp=dp, sp=sp))
    try:
        model = make_model(cell, dtype, layers, tokens)
        inputs, targets = make_batch(dtype, tokens, steps)
        rows = slice(*rows_of(ROWS, comms.grid, comms.coords["dp"]))
        segment = slice(*segment_of(steps, comms.grid, comms.coords["sp"]))
        state = initial_state(model, dtype, random_state)[:, :, rows]
        runner = StepRunner(model, comms, rows.stop - rows.start, microbatches, bucket_mb=0.0005)
        loss, final = runner(inputs[rows, segment], targets[rows, segment], state, float(targets.numel()))
        total = torch.tensor([float(loss)], dtype=torch.float64)
        comms.world.Allreduce(MPI.IN_PLACE, total.numpy(), MPI.SUM)
        runner.reducer.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        last_segment = comms.coords["sp"] == sp - 1
        return float(total[0]), grads, final, rows, last_segment
    finally:
        comms.free()


def check(cell, dtype=torch.float64, layers=2, tokens=True, random_state=False, microbatches=0, steps=STEPS):
    expected_loss, expected_grads, expected_final = serial(cell, dtype, layers, tokens, random_state, steps)
    for dp, sp in grid_shapes():
        loss, grads, final, rows, last_segment = parallel(cell, dtype, layers, tokens, random_state, dp, sp,
                                                          microbatches, steps)
        where = f"rank {world.rank}, dp={dp} sp={sp}, {cell}, {dtype}"
        assert loss == pytest.approx(expected_loss, rel=TOLERANCE[dtype]["rtol"], abs=TOLERANCE[dtype]["atol"]), where
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], **TOLERANCE[dtype], msg=f"{where}: {name}")
        if last_segment:  # the final states (carried in stateful mode) live on the last segment
            torch.testing.assert_close(final, expected_final[:, :, rows], **TOLERANCE[dtype], msg=f"{where}: final")


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
    # corrects only a prefix of its zero-start scan (models.scan.enter_state): still exact.
    check(cell, dtype=dtype, layers=2, random_state=True, steps=601)


@pytest.mark.parametrize("microbatches", [1, 2, 3])
def test_microbatches_not_dividing_rows(microbatches):
    check("gru", microbatches=microbatches)


def test_too_many_microbatches_refused():
    from mpirnn.errors import ConfigError
    from mpirnn.parallel.step import resolve_microbatches

    with pytest.raises(ConfigError, match="microbatches = 9 but"):
        resolve_microbatches(9, rows=3, sp=2)
    with pytest.raises(ConfigError, match="too small for microbatching"):
        resolve_microbatches(0, rows=1, sp=2)
    assert resolve_microbatches(0, rows=1, sp=1) == 1
    # automatic: at least 8 rows a microbatch, between 2 and 8 microbatches
    assert [resolve_microbatches(0, rows=r, sp=2) for r in (2, 3, 31, 32, 200)] == [2, 2, 3, 4, 8]
