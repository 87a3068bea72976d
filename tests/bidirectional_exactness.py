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
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from exactness import HIDDEN, TOLERANCE, grids
from labelled_exactness import (CLASSES, FEATURES, FUSED, ROWS, STEPS, TARGETS, VOCAB, make_labelled_batch,
                                valid_elements)
from mpirnn.data.labelled_targets import LabelledTargets
from mpirnn.distributed.mesh import Comms
from mpirnn.errors import ConfigError
from mpirnn.grid import Grid
from mpirnn.models.model import RecurrentModel
from mpirnn.parallel.plan import make_plan
from mpirnn.parallel.shard import row_blocks, stage_model, take_rows
from mpirnn.parallel.step import StepRunner
from mpirnn.parallel.tensor import TensorGroup
from support import TEST_DEVICE

world = MPI.COMM_WORLD
KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def make_bidirectional_model(cell, task, layers, dtype=torch.float64):
    tokens = task == "tag"
    torch.manual_seed(1234)
    model = RecurrentModel(cell, hidden=HIDDEN, layers=layers, embed=5, vocab_size=VOCAB if tokens else None,
                           features=None if tokens else FEATURES, outputs=TARGETS if task == "regress" else CLASSES,
                           bidirectional=True)
    return model.to(device=TEST_DEVICE, dtype=dtype)


def reference(cell, task, layers):
    """(loss, {serial parameter name: gradient}) from a model that never sees a padded step."""
    model = make_bidirectional_model(cell, task, layers)
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
        for i in range(layers):
            for kind in KINDS:
                for suffix in ("", "_reverse"):
                    grads[f"layers.{i}.{kind}_l0{suffix}"] = getattr(stacked, f"{kind}_l{i}{suffix}").grad.clone()
    return float(loss.detach()), grads


def _packed(model, cell, layers, inputs, labels, lengths):
    """PyTorch's stacked bidirectional layer, holding our layers' parameters, over the packed batch:
    (outputs at every valid step in packed order, [forward; reverse] ends per row, the module,
    the labels in packed order)."""
    stacked = FUSED[cell](model.layers[0].input_size, HIDDEN, num_layers=layers, batch_first=True,
                          bidirectional=True).to(device=TEST_DEVICE, dtype=torch.float64)
    with torch.no_grad():
        for i in range(layers):
            for kind in KINDS:
                for suffix in ("", "_reverse"):
                    getattr(stacked, f"{kind}_l{i}{suffix}").copy_(getattr(model.layers[i], f"{kind}_l0{suffix}"))
    model.layers = nn.ModuleList()   # only the embedding and head of `model` take part
    packed = pack_padded_sequence(model.embed(inputs), lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, last = stacked(packed)
    h_n = last[0] if cell == "lstm" else last
    ends = torch.cat([h_n[-2], h_n[-1]], dim=1)   # the top layer's forward and reverse final states
    scored = pack_padded_sequence(labels.unsqueeze(-1), lengths.cpu(), batch_first=True,
                                  enforce_sorted=False).data.squeeze(-1) if labels.dim() == 2 else None
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
    dp, sp, pp, tp = grid_shape
    comms = Comms.create(Grid(world.size, dp=dp, sp=sp, pp=pp, tp=tp))
    try:
        plan = make_plan(comms.grid, comms.coords, batch_size=ROWS, seq_len=STEPS, layers=layers, cell=cell,
                         microbatches=microbatches, hidden=HIDDEN, bidirectional=True)
        group = TensorGroup(comms.axis["tp"], HIDDEN, comms.timer) if tp > 1 else None
        model = stage_model(make_bidirectional_model(cell, task, layers), plan, group)
        inputs, labels, lengths = make_labelled_batch(task)
        rows, segment = slice(*plan.rows), slice(*plan.segment)
        mine = labels[rows, segment] if task == "tag" else labels[rows]
        targets = LabelledTargets(task, mine, lengths[rows], plan.segment[0]) if plan.last_stage else None
        local_inputs = inputs[rows, segment] if plan.first_stage else None
        state = model.zero_state(plan.local_rows, inputs, range(*plan.layers))
        norm = valid_elements(task, labels, False)
        runner = StepRunner(model, plan, comms, bucket_mb=0.0005)
        evaluated, _ = runner.evaluate(local_inputs, targets, state, norm, lengths=lengths[rows])
        loss, _ = runner(local_inputs, targets, state, norm, lengths[rows])
        torch.testing.assert_close(evaluated, loss.to(evaluated.dtype), **TOLERANCE[torch.float64])
        total = torch.tensor([float(loss)], dtype=torch.float64)
        comms.world.Allreduce(MPI.IN_PLACE, total.numpy(), MPI.SUM)
        runner.reducer.remove()
        grads = {n: (p.grad.clone(), row_blocks(model, n, plan)) for n, p in model.named_parameters()}
        return float(total[0]), grads, plan
    finally:
        comms.free()


def check_bidirectional(cell, task, layers=2, microbatches=0, grid_list=None):
    """Every grid of this world size equals the reference; returns the grids checked."""
    expected_loss, expected_grads = reference(cell, task, layers)
    tolerance = TOLERANCE[torch.float64]
    checked = []
    for grid_shape in grid_list or grids(layers):
        if grid_shape[0] > ROWS or microbatches > ROWS // grid_shape[0]:
            continue
        loss, grads, plan = on_grid(cell, task, layers, grid_shape, microbatches)
        where = f"rank {world.rank}, dp×sp×pp×tp={grid_shape}, M={plan.microbatches} C={plan.chunks}, {cell} {task}"
        assert loss == pytest.approx(expected_loss, rel=tolerance["rtol"], abs=tolerance["atol"]), where
        assert grads, where
        for name, (grad, blocks) in grads.items():
            torch.testing.assert_close(grad, take_rows(expected_grads[name], blocks), **tolerance,
                                       msg=f"{where}: {name}")
        checked.append(grid_shape)
    return checked


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
