"""The exactness check shared by the MPI test files: one step on a grid against the serial model.

`check(cell, ...)` runs the serial model, then the same step on each grid of this world size
(every valid dp x sp x pp x tp factorization unless `grid_list` names some), and asserts on
every rank that the loss, every gradient this rank holds and its final states equal serial.
Used by tests/mpi/test_exact_step.py (-n 1..4) and tests/mpi8/test_composed.py (-n 8).
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from mpirnn.data.horizon import HorizonTargets, targets_per_window
from mpirnn.distributed.mesh import Comms
from mpirnn.models.dropout import DropoutKey
from mpirnn.models.model import RecurrentModel
from mpirnn.models.precision import FLOAT32, serial_loss
from mpirnn.grid import Grid
from mpirnn.parallel.plan import layers_of, make_plan, mode_of
from mpirnn.parallel.shard import row_blocks, stage_model, take_rows
from mpirnn.parallel.step import StepRunner
from mpirnn.parallel.tensor import TensorGroup
from support import TEST_DEVICE, factorizations

CELLS = ["rnn", "lstm", "gru", "mingru", "minlstm"]

world = MPI.COMM_WORLD
ROWS, STEPS, VOCAB, FEATURES = 6, 23, 11, 3
HIDDEN = 12  # divisible by tp = 2, 3 and 4
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}
# train.precision = bf16 against the serial bf16 run (docs/design.md, "Exactness"; tests/mpi/test_exact_bf16.py)
REDUCED_TOLERANCE = dict(rtol=1e-2, atol=1e-3)


def grids(layers: int, n: int | None = None) -> list[tuple[int, int, int, int]]:
    """Every (dp, sp, pp, tp) with dp*sp*pp*tp = n, pp <= layers and tp dividing the hidden size:
    the whole matrix of valid factorizations, not a hand-picked list."""
    return factorizations(world.size if n is None else n, layers, HIDDEN)


def make_model(cell, dtype, layers, tokens=True, predicts=None):
    """`predicts`: a series head's steps ahead and quantiles (mpirnn/models/series_head.py; None: next step)."""
    torch.manual_seed(1234)
    model = RecurrentModel(cell, hidden=HIDDEN, layers=layers, embed=5,
                           vocab_size=VOCAB if tokens else None, features=None if tokens else FEATURES,
                           predicts=predicts)
    return model.to(device=TEST_DEVICE, dtype=dtype)


def make_batch(dtype, tokens=True, steps=STEPS, horizon=1):
    """(inputs, targets); with `horizon` > 1 the targets are a HorizonTargets (mpirnn/data/horizon.py)."""
    generator = torch.Generator().manual_seed(99)
    if tokens:
        data = torch.randint(0, VOCAB, (ROWS, steps + 1), generator=generator)
    else:
        data = torch.randn(ROWS, steps + 1, FEATURES, generator=generator, dtype=dtype)
    data = data.to(TEST_DEVICE)
    if horizon > 1:   # the window's next steps; the executor cuts them per unit
        return data[:, :-1], HorizonTargets(data[:, 1:], 0, steps, steps, horizon)
    return data[:, :-1], data[:, 1:]


def scored_terms(targets) -> float:
    """The loss's divisor: every scored term of the batch."""
    if isinstance(targets, HorizonTargets):
        rows, _, features = targets.values.shape
        return float(rows * targets_per_window(targets.seq_len, targets.horizon) * features)
    return float(targets.numel())


def initial_state(model, dtype, random, layers=None):
    state = torch.zeros(layers or model.depth, model.parts, ROWS, model.hidden, dtype=dtype, device=TEST_DEVICE)
    if random:  # a carried state (stateful mode); positive, as linear cells' states are
        generator = torch.Generator().manual_seed(5)
        state = torch.rand(state.shape, generator=generator, dtype=dtype).to(TEST_DEVICE) * 0.5 + 0.1
    return state


def dropout_key(dropout):
    """Step 3 of seed 11's dropout masks (None: no dropout)."""
    return DropoutKey(dropout, seed=11, step=3) if dropout else None


def serial(cell, dtype, layers, tokens, random_state, steps, precision=FLOAT32, dropout=0.0, predicts=None):
    model = make_model(cell, dtype, layers, tokens, predicts)
    inputs, targets = make_batch(dtype, tokens, steps, predicts.horizon if predicts else 1)
    loss, final = serial_loss(model, inputs, targets, initial_state(model, dtype, random_state), precision,
                              dropout_key(dropout))
    loss = loss / scored_terms(targets)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}, final.detach()


def parallel(cell, dtype, layers, tokens, random_state, grid_shape, microbatches, steps, chunks=0,
             precision=FLOAT32, dropout=0.0, predicts=None):
    dp, sp, pp, tp = grid_shape
    comms = Comms.create(Grid(world.size, dp=dp, sp=sp, pp=pp, tp=tp))
    try:
        plan = make_plan(comms.grid, comms.coords, batch_size=ROWS, seq_len=steps, layers=layers, cell=cell,
                         microbatches=microbatches, chunks=chunks, hidden=HIDDEN)
        group = TensorGroup(comms.axis["tp"], HIDDEN, comms.timer) if tp > 1 else None
        model = stage_model(make_model(cell, dtype, layers, tokens, predicts), plan, group)
        inputs, targets = make_batch(dtype, tokens, steps, predicts.horizon if predicts else 1)
        rows, segment = slice(*plan.rows), slice(*plan.segment)
        stage = slice(*plan.layers)
        state = initial_state(model, dtype, random_state, layers)[stage, :, rows, slice(*plan.hidden)]
        runner = StepRunner(model, plan, comms, bucket_mb=0.0005, precision=precision)
        local_inputs = inputs[rows, segment] if plan.first_stage else None
        local_targets = targets[rows, segment] if plan.last_stage else None
        # Forward only (validation) first: the same loss, the same final states, no gradients.
        evaluated, evaluated_final = runner.evaluate(local_inputs, local_targets, state, scored_terms(targets))
        assert all(p.grad is None for p in model.parameters())
        loss, final = runner(local_inputs, local_targets, state, scored_terms(targets), noise=dropout_key(dropout))
        # Equal to rounding: the loss shares are summed in the other order, and without autograd
        # PyTorch may pick another kernel for the fused cells.
        bound = REDUCED_TOLERANCE if precision.reduced else TOLERANCE[dtype]
        if dropout:  # evaluation never drops: its loss is the model's without dropout
            assert float(evaluated) != float(loss) or float(loss) == 0.0
        else:
            torch.testing.assert_close(evaluated, loss.to(evaluated.dtype), **bound)
            torch.testing.assert_close(evaluated_final, final, **bound)
        total = torch.tensor([float(loss)], dtype=torch.float64)
        comms.world.Allreduce(MPI.IN_PLACE, total.numpy(), MPI.SUM)
        runner.reducer.remove()
        grads = {n: (p.grad.clone(), row_blocks(model, n, plan)) for n, p in model.named_parameters()}
        return float(total[0]), grads, final, plan
    finally:
        comms.free()


def check(cell, dtype=torch.float64, layers=2, tokens=True, random_state=False, microbatches=0, steps=STEPS,
          chunks=0, grid_list=None, dropout=0.0, predicts=None):
    expected_loss, expected_grads, expected_final = serial(cell, dtype, layers, tokens, random_state, steps,
                                                           dropout=dropout, predicts=predicts)
    for grid_shape in grid_list or grids(layers):
        if grid_shape[0] > ROWS or microbatches > ROWS // grid_shape[0]:
            continue  # data.batch_size < dp and microbatches > rows are refused before compute (tests/test_plan.py)
        chained = mode_of(cell, grid_shape[1]) == "chain"
        loss, grads, final, plan = parallel(cell, dtype, layers, tokens, random_state, grid_shape, microbatches,
                                            steps, chunks if chained else 0, dropout=dropout, predicts=predicts)
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


