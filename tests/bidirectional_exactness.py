"""Bidirectional layers on rows of different lengths: one step on a grid against references that
never see the padding, on every rank (used by tests/mpi/test_bidirectional_exact.py and
tests/mpi8/test_bidirectional_composed.py), sequence parallelism included; and the check that a
mutated reverse chain fails it.

The references:
- rnn, lstm, gru: PyTorch's own stacked nn.RNN / nn.LSTM / nn.GRU(bidirectional=True) over
  `pack_padded_sequence`, holding our layers' parameters (`weight_ih_l0_reverse`, ...), with the
  model's embedding and head. `tag` scores [forward; reverse] at every valid step; `classify`
  and `regress` read the top layer's h_n: [forward at the row's last valid step; reverse at step 0];
- mingru, minlstm (PyTorch has no such layer): each row alone, cut to its length, the forward
  direction a plain loop h = a h + b over it and the reverse direction the same loop over the
  row reversed (`torch.flip`), with the reverse projection `linear_reverse`.
The padded inputs hold large random values (see tests/labelled_exactness.py). Loss and every
gradient this rank holds must equal the reference in float64 to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI
from torch.nn import functional as F

from exactness import HIDDEN, grids
from labelled_exactness import (EMBED, FUSED, ROWS, STEPS, check_grids, fused_stack, make_labelled_batch,
                                make_labelled_model, on_grid as labelled_on_grid, packed_labels, stacked_grads,
                                valid_elements)
from mpirnn.errors import ConfigError
from mpirnn.grid import Grid
from mpirnn.parallel.plan import make_plan
from mpirnn.parallel.shard import take_rows

world = MPI.COMM_WORLD


def reference(cell, task, layers):
    """(loss, {serial parameter name: gradient}) from a model that never sees a padded step."""
    model = make_labelled_model(cell, task, layers, bidirectional=True)
    inputs, labels, lengths = make_labelled_batch(task)
    if cell in FUSED:
        steps, ends, stacked, scored = _packed(model, cell, layers, inputs, labels, lengths)
    else:
        steps, ends = _rows_alone(model, inputs, lengths)
        stacked, scored = None, labels[labels >= 0]
    if task == "tag":
        loss = F.cross_entropy(model.head(steps), scored, reduction="sum")
    else:
        prediction = model.head(ends)
        loss = (F.mse_loss(prediction, labels, reduction="sum") if task == "regress"
                else F.cross_entropy(prediction, labels, reduction="sum"))
    loss = loss / valid_elements(task, labels, False)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    if stacked is not None:
        grads.update(stacked_grads(stacked, layers, bidirectional=True))
    return float(loss.detach()), grads


def _packed(model, cell, layers, inputs, labels, lengths):
    """PyTorch's stacked bidirectional layer, holding our layers' parameters, over the packed batch:
    (outputs at every valid step in packed order, [forward; reverse] ends per row, the module,
    the labels in packed order)."""
    out, h_n, stacked = fused_stack(model, cell, layers, inputs, lengths, bidirectional=True)
    ends = torch.cat([h_n[-2], h_n[-1]], dim=1)   # the top layer's forward and reverse final states
    scored = packed_labels(labels, lengths) if labels.dim() == 2 else None
    return out.data, ends, stacked, scored


def _loop(activate, linear, x):
    """A linear cell's direction over x [T, D] as the plain loop h = a h + b from h = 0: h [T, H]."""
    log_a, log_b = activate(linear(x))
    h, out = torch.zeros_like(log_a[0]), []
    for t in range(x.shape[0]):
        h = torch.exp(log_a[t]) * h + torch.exp(log_b[t])
        out.append(h)
    return torch.stack(out)


def _rows_alone(model, inputs, lengths):
    """Linear cells, each row alone cut to its length: (outputs at every valid step in row-major
    order, [forward at the last step; reverse at step 0] per row)."""
    steps, ends = [], []
    for r in range(ROWS):
        x = model.embed(inputs[r, :lengths[r]])
        for layer in model.layers:
            forward = _loop(layer.kind.activate, layer.linear, x)
            reverse = _loop(layer.kind.activate, layer.linear_reverse, x.flip(0)).flip(0)
            x = torch.cat([forward, reverse], dim=1)
        steps.append(x)
        ends.append(torch.cat([x[-1, :HIDDEN], x[0, HIDDEN:]]))
    return torch.cat(steps), torch.stack(ends)


def on_grid(cell, task, layers, grid_shape, microbatches=0):
    """One step on this grid, unweighted and without time chunks (refused with bidirectional layers):
    tests/labelled_exactness.py's on_grid with bidirectional layers."""
    return labelled_on_grid(cell, task, layers, grid_shape, False, microbatches, bidirectional=True)


def offloading_grids(cell, layers, microbatches=0):
    """The grids of this world size whose plan offloads reverse directions to the stage below
    (pipelines at sp = tp = 1 whose upper stages do more work: mpirnn/parallel/plan.py)."""
    found = []
    for dp, sp, pp, tp in grids(layers):
        if microbatches > ROWS // dp:
            continue
        grid = Grid(world.size, dp=dp, sp=sp, pp=pp, tp=tp)
        plan = make_plan(grid, grid.coords(world.rank), batch_size=ROWS, seq_len=STEPS, layers=layers, cell=cell,
                         microbatches=microbatches, hidden=HIDDEN, bidirectional=True, embed=EMBED)
        if plan.offloaded:
            found.append((dp, sp, pp, tp))
    return found


def check_gradients_differ(cell, task, grid_shape, layers=2, microbatches=0):
    """Under a mutation that leaves the loss alone (the caller's monkeypatch), some rank's
    gradients must NOT equal the reference's; every rank asserts the world's verdict."""
    _, expected_grads = reference(cell, task, layers)
    _, grads, _ = on_grid(cell, task, layers, grid_shape, microbatches)
    differs = any(not torch.allclose(grad, take_rows(expected_grads[name], blocks), rtol=1e-6, atol=1e-9)
                  for name, (grad, blocks) in grads.items())
    assert world.allreduce(differs, op=MPI.LOR), \
        f"rank {world.rank}, {grid_shape}, {cell} {task}: a mutated step still gave the reference's gradients"


def check_bidirectional(cell, task, layers=2, microbatches=0, grid_list=None):
    """Every grid of this world size equals the reference; returns the grids checked."""
    return check_grids(reference(cell, task, layers),
                       lambda grid_shape: on_grid(cell, task, layers, grid_shape, microbatches),
                       f"{cell} {task}", layers, microbatches, grid_list)


def check_refused(cell, layers=2):
    """Time chunks with bidirectional layers are refused on every grid of this world size by the
    plan, with one line naming model.bidirectional, before anything runs."""
    refused = grids(layers)
    for dp, sp, pp, tp in refused:
        grid = Grid(world.size, dp=dp, sp=sp, pp=pp, tp=tp)
        with pytest.raises(ConfigError, match="model.bidirectional") as caught:
            make_plan(grid, grid.coords(world.rank), batch_size=ROWS, seq_len=STEPS, layers=layers, cell=cell,
                      hidden=HIDDEN, bidirectional=True, chunks=2)
        assert "\n" not in str(caught.value)
    return refused


def check_mutation_fails(cell, task, grid_shape, layers=2):
    """Under a mutation of the reverse chain (the caller's monkeypatch), the step must NOT equal the
    reference: the loss (summed over the world, so the same on every rank) differs on every rank."""
    expected_loss, _ = reference(cell, task, layers)
    loss, _, _ = on_grid(cell, task, layers, grid_shape)
    assert abs(loss - expected_loss) > 1e-6 * abs(expected_loss), \
        f"rank {world.rank}, {grid_shape}, {cell} {task}: a mutated reverse chain still matched the reference"
