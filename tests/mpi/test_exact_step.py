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
from mpirnn.models.model import RecurrentModel
from mpirnn.parallel.grid import Grid
from mpirnn.parallel.plan import layers_of, make_plan, mode_of
from mpirnn.parallel.shard import row_blocks, stage_model, take_rows
from mpirnn.parallel.tensor import TensorGroup
from mpirnn.parallel.step import StepRunner
from support import TEST_DEVICE

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]

world = MPI.COMM_WORLD
CELLS = ["rnn", "lstm", "gru", "mingru", "minlstm"]
ROWS, STEPS, VOCAB, FEATURES = 6, 23, 11, 3
HIDDEN = 12  # divisible by tp = 2, 3 and 4
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def grids(layers: int, n: int | None = None) -> list[tuple[int, int, int, int]]:
    """Every (dp, sp, pp, tp) with dp*sp*pp*tp = n, pp <= layers and tp dividing the hidden size:
    the whole matrix of valid factorizations, not a hand-picked list."""
    n = world.size if n is None else n
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return [(dp, sp, pp, n // (dp * sp * pp)) for dp in divisors for sp in divisors for pp in divisors
            if n % (dp * sp * pp) == 0 and pp <= layers and HIDDEN % (n // (dp * sp * pp)) == 0]


def make_model(cell, dtype, layers, tokens=True):
    torch.manual_seed(1234)
    model = RecurrentModel(cell, hidden=HIDDEN, layers=layers, embed=5,
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


def initial_state(model, dtype, random, layers=None):
    state = torch.zeros(layers or model.depth, model.parts, ROWS, model.hidden, dtype=dtype, device=TEST_DEVICE)
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


def parallel(cell, dtype, layers, tokens, random_state, grid_shape, microbatches, steps, chunks=0):
    dp, sp, pp, tp = grid_shape
    comms = Comms.create(Grid(world.size, dp=dp, sp=sp, pp=pp, tp=tp))
    try:
        plan = make_plan(comms.grid, comms.coords, batch_size=ROWS, seq_len=steps, layers=layers, cell=cell,
                         microbatches=microbatches, chunks=chunks, hidden=HIDDEN)
        group = TensorGroup(comms.axis["tp"], HIDDEN, comms.timer) if tp > 1 else None
        model = stage_model(make_model(cell, dtype, layers, tokens), plan, group)
        inputs, targets = make_batch(dtype, tokens, steps)
        rows, segment = slice(*plan.rows), slice(*plan.segment)
        stage = slice(*plan.layers)
        state = initial_state(model, dtype, random_state, layers)[stage, :, rows, slice(*plan.hidden)]
        runner = StepRunner(model, plan, comms, bucket_mb=0.0005)
        local_inputs = inputs[rows, segment] if plan.first_stage else None
        local_targets = targets[rows, segment] if plan.last_stage else None
        # Forward only (validation) first: the same loss, the same final states, no gradients.
        evaluated, evaluated_final = runner.evaluate(local_inputs, local_targets, state, float(targets.numel()))
        assert all(p.grad is None for p in model.parameters())
        loss, final = runner(local_inputs, local_targets, state, float(targets.numel()))
        # Equal to rounding: the loss shares are summed in the other order, and without autograd
        # PyTorch may pick another kernel for the fused cells.
        torch.testing.assert_close(evaluated, loss.to(evaluated.dtype), **TOLERANCE[dtype])
        torch.testing.assert_close(evaluated_final, final, **TOLERANCE[dtype])
        total = torch.tensor([float(loss)], dtype=torch.float64)
        comms.world.Allreduce(MPI.IN_PLACE, total.numpy(), MPI.SUM)
        runner.reducer.remove()
        grads = {n: (p.grad.clone(), row_blocks(model, n, plan)) for n, p in model.named_parameters()}
        return float(total[0]), grads, final, plan
    finally:
        comms.free()


def check(cell, dtype=torch.float64, layers=2, tokens=True, random_state=False, microbatches=0, steps=STEPS,
          chunks=0):
    expected_loss, expected_grads, expected_final = serial(cell, dtype, layers, tokens, random_state, steps)
    for grid_shape in grids(layers):
        if grid_shape[0] > ROWS or microbatches > ROWS // grid_shape[0]:
            continue  # data.batch_size < dp and microbatches > rows are refused before compute (tests/test_plan.py)
        chained = mode_of(cell, grid_shape[1]) == "chain"
        loss, grads, final, plan = parallel(cell, dtype, layers, tokens, random_state, grid_shape, microbatches,
                                            steps, chunks if chained else 0)
        where = (f"rank {world.rank}, dp×sp×pp×tp={grid_shape}, M={plan.microbatches} C={plan.chunks}, {cell}, "
                 f"{dtype}, {layers} layers")
        assert loss == pytest.approx(expected_loss, rel=TOLERANCE[dtype]["rtol"], abs=TOLERANCE[dtype]["atol"]), where
        owned = set(grads)
        assert owned, where
        if grid_shape[2] == 1:
            assert owned == set(expected_grads), where  # without pp every rank holds the whole model
        for name, (grad, blocks) in grads.items():
            # Under tp a layer's parameters are this rank's rows of every gate (blocks); others whole.
            expected = take_rows(expected_grads[name], blocks)
            torch.testing.assert_close(grad, expected, **TOLERANCE[dtype], msg=f"{where}: {name}")
        if plan.last_segment:  # the final states (carried in stateful mode) live on the last segment
            expected = expected_final[slice(*plan.layers), :, slice(*plan.rows), slice(*plan.hidden)]
            torch.testing.assert_close(final, expected, **TOLERANCE[dtype], msg=f"{where}: final")
    # Every parameter is owned by some stage: the stages together hold the serial model.
    for grid_shape in grids(layers):
        if grid_shape[2] > 1:
            names = [n for p in range(grid_shape[2]) for n in stage_names(layers, grid_shape[2], p, expected_grads)]
            assert sorted(names) == sorted(expected_grads)


def stage_names(layers, pp, stage, names):
    lo, hi = layers_of(layers, pp, stage)
    keep = {f"layers.{i}." for i in range(lo, hi)}
    return [n for n in names if any(n.startswith(k) for k in keep)
            or (n.startswith("input.") and stage == 0) or (n.startswith("head.") and stage == pp - 1)]


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


@pytest.mark.parametrize("cell", CELLS)
def test_pipeline_stages_uneven_with_chunks(cell):
    # 4 layers over pp = 3 stages is uneven (2, 1, 1); chunks = 4 do not divide the 23 steps or
    # the segments, and at -n 4 pp = 4 gives every stage one layer.
    check(cell, layers=4, chunks=4)


@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru"])
def test_batch_size_one_with_chunks(cell):
    # One long sequence: the only parallelism for nonlinear cells is the pipeline over time chunks.
    global ROWS
    rows, ROWS = ROWS, 1
    try:
        check(cell, layers=4, chunks=5, random_state=True, microbatches=1)
    finally:
        ROWS = rows
