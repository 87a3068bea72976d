"""Labelled tasks on rows of different lengths: one step on a grid against references that never
see the padding, on every rank (shared by tests/mpi/test_labelled_exact.py and tests/mpi8).

The references:
- rnn, lstm, gru: PyTorch's own nn.RNN / nn.LSTM / nn.GRU over `pack_padded_sequence`, with the
  model's embedding and head; `classify` and `regress` read the top layer's h_n, which PyTorch
  takes at each row's own last valid step;
- mingru, minlstm (PyTorch has no such layer): the plain serial model run on each row alone,
  cut to its length.
The padded inputs hold large random values (not zeros), so a padded step that leaked into any
result would show. Loss and every gradient this rank holds must equal the reference in float64
to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from exactness import HIDDEN, TOLERANCE, grids, make_model
from mpirnn.data.labelled_targets import LabelledTargets
from mpirnn.distributed.mesh import Comms
from mpirnn.grid import Grid
from mpirnn.models.model import RecurrentModel
from mpirnn.parallel.plan import make_plan, mode_of
from mpirnn.parallel.shard import row_blocks, stage_model, take_rows
from mpirnn.parallel.step import StepRunner
from mpirnn.parallel.tensor import TensorGroup
from support import TEST_DEVICE

world = MPI.COMM_WORLD
ROWS, STEPS, VOCAB, FEATURES, CLASSES, TARGETS = 6, 23, 11, 3, 4, 2
# Narrower than a bidirectional layer's 2 x HIDDEN outputs, so that bidirectional pipelines offload
# reverse directions to the stage below (mpirnn/parallel/plan.py `offload_reverse`).
EMBED = 5
# Unsorted, one row of a single step, one full row: segments and chunks that are all padding
# for some rows and for whole microbatches.
LENGTHS = torch.tensor([9, 23, 1, 17, 4, 12])
WEIGHTS = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def make_labelled_model(cell, task, layers, dtype=torch.float64, bidirectional=False):
    tokens = task == "tag"   # token inputs for tag (DNA-like), features for the others
    torch.manual_seed(1234)
    model = RecurrentModel(cell, hidden=HIDDEN, layers=layers, embed=EMBED, vocab_size=VOCAB if tokens else None,
                           features=None if tokens else FEATURES, outputs=TARGETS if task == "regress" else CLASSES,
                           bidirectional=bidirectional)
    return model.to(device=TEST_DEVICE, dtype=dtype)


def make_labelled_batch(task, dtype=torch.float64):
    """(inputs with junk at padded steps, labels, lengths)."""
    g = torch.Generator().manual_seed(7)
    valid = torch.arange(STEPS)[None] < LENGTHS[:, None]
    if task == "tag":
        inputs = torch.randint(0, VOCAB, (ROWS, STEPS), generator=g)
        labels = torch.where(valid, torch.randint(0, CLASSES, (ROWS, STEPS), generator=g), -1)
    else:
        inputs = torch.randn(ROWS, STEPS, FEATURES, generator=g, dtype=dtype)
        inputs = torch.where(valid[..., None], inputs, 1e3 * torch.rand(inputs.shape, generator=g, dtype=dtype))
        labels = (torch.randn(ROWS, TARGETS, generator=g, dtype=dtype) if task == "regress"
                  else torch.randint(0, CLASSES, (ROWS,), generator=g))
    return inputs.to(TEST_DEVICE), labels.to(TEST_DEVICE), LENGTHS.to(TEST_DEVICE)


def valid_elements(task, labels, weighted) -> float:
    if task == "regress":
        return float(labels.numel())
    scored = labels[labels >= 0] if task == "tag" else labels
    return float(WEIGHTS[scored.cpu()].sum()) if weighted else float(scored.numel())


def reference(cell, task, layers, weighted):
    """(loss, {serial parameter name: gradient}) from a model that never sees a padded step."""
    model = make_labelled_model(cell, task, layers)
    inputs, labels, lengths = make_labelled_batch(task)
    weights = WEIGHTS.to(TEST_DEVICE) if weighted else None
    if cell in FUSED:
        top = packed_top(model, cell, layers, inputs, lengths, task)
        grads_from = top["named"]
    else:
        top = {"steps": [], "last": []}
        for r in range(ROWS):
            state = model.zero_state(1, inputs)
            outputs, _ = model.run_stack(model.embed(inputs[r:r + 1, :lengths[r]]), state)
            top["steps"].append(outputs[0])
            top["last"].append(outputs[0, -1])
        grads_from = None
    if task == "tag":
        outputs = torch.cat(top["steps"]) if grads_from is None else top["steps"]
        scored = labels[labels >= 0] if grads_from is None else top["labels"]
        loss = F.cross_entropy(model.head(outputs), scored, weight=weights, reduction="sum")
    else:
        last = torch.stack(top["last"]) if grads_from is None else top["last"]
        prediction = model.head(last)
        loss = (F.mse_loss(prediction, labels, reduction="sum") if task == "regress"
                else F.cross_entropy(prediction, labels, weight=weights, reduction="sum"))
    loss = loss / valid_elements(task, labels, weighted)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    if grads_from is not None:   # the recurrent layers' gradients come from PyTorch's stacked module
        grads.update(stacked_grads(grads_from, layers))
    return float(loss.detach()), grads


def fused_stack(model, cell, layers, inputs, lengths, bidirectional=False):
    """PyTorch's stacked layer (nn.RNN / nn.LSTM / nn.GRU), holding our layers' parameters, over the
    packed batch: (its packed output, h_n, the module). Leaves only the embedding and head in `model`.
    Shared with tests/bidirectional_exactness.py, which passes bidirectional=True."""
    suffixes = ("", "_reverse") if bidirectional else ("",)
    stacked = FUSED[cell](model.layers[0].input_size, HIDDEN, num_layers=layers, batch_first=True,
                          bidirectional=bidirectional).to(device=TEST_DEVICE, dtype=torch.float64)
    with torch.no_grad():
        for i in range(layers):
            for kind in KINDS:
                for suffix in suffixes:
                    getattr(stacked, f"{kind}_l{i}{suffix}").copy_(getattr(model.layers[i], f"{kind}_l0{suffix}"))
    model.layers = nn.ModuleList()   # only the embedding and head of `model` take part
    packed = pack_padded_sequence(model.embed(inputs), lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, last = stacked(packed)
    return out, (last[0] if cell == "lstm" else last), stacked


def stacked_grads(stacked, layers, bidirectional=False) -> dict:
    """The fused module's gradients under our layers' serial parameter names."""
    suffixes = ("", "_reverse") if bidirectional else ("",)
    return {f"layers.{i}.{kind}_l0{suffix}": getattr(stacked, f"{kind}_l{i}{suffix}").grad.clone()
            for i in range(layers) for kind in KINDS for suffix in suffixes}


def packed_labels(labels, lengths):
    """Per-step labels [ROWS, STEPS] of every valid step, in the packed (time-major) order of a
    packed output's .data."""
    return pack_padded_sequence(labels.unsqueeze(-1), lengths.cpu(), batch_first=True,
                                enforce_sorted=False).data.squeeze(-1)


def packed_top(model, cell, layers, inputs, lengths, task):
    """PyTorch's stacked layer, holding our layers' parameters, over the packed batch."""
    out, h_n, stacked = fused_stack(model, cell, layers, inputs, lengths)
    result = {"named": stacked, "last": h_n[-1]}
    if task == "tag":
        # out.data is every valid step, in time-major packed order; its labels in the same order.
        _, labels, _ = make_labelled_batch(task)
        result["steps"] = out.data
        result["labels"] = packed_labels(labels, lengths)
    return result


def on_grid(cell, task, layers, grid_shape, weighted, microbatches=0, chunks=0, bidirectional=False):
    """One step on this grid: (loss summed over the world, {name: (gradient, its row blocks)}, plan).
    tests/bidirectional_exactness.py runs its grids through it with bidirectional=True."""
    dp, sp, pp, tp = grid_shape
    comms = Comms.create(Grid(world.size, dp=dp, sp=sp, pp=pp, tp=tp))
    try:
        plan = make_plan(comms.grid, comms.coords, batch_size=ROWS, seq_len=STEPS, layers=layers, cell=cell,
                         microbatches=microbatches, chunks=chunks, hidden=HIDDEN, bidirectional=bidirectional,
                         embed=EMBED)
        group = TensorGroup(comms.axis["tp"], HIDDEN, comms.timer) if tp > 1 else None
        model = stage_model(make_labelled_model(cell, task, layers, bidirectional=bidirectional), plan, group)
        inputs, labels, lengths = make_labelled_batch(task)
        rows, segment = slice(*plan.rows), slice(*plan.segment)
        weights = WEIGHTS.to(TEST_DEVICE) if weighted else None
        mine = labels[rows, segment] if task == "tag" else labels[rows]
        targets = LabelledTargets(task, mine, lengths[rows], plan.segment[0], weights) if plan.last_stage else None
        local_inputs = inputs[rows, segment] if plan.first_stage else None
        state = model.zero_state(plan.local_rows, inputs, range(*plan.layers))
        norm = valid_elements(task, labels, weighted)
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


def check_grids(expected, run, what, layers, microbatches=0, grid_list=None):
    """Every grid of this world size (or grid_list) that can run this batch: `run(grid_shape)`'s
    step (on_grid's result) equals the reference `expected` (loss, gradients); returns the grids
    checked. Shared by check_labelled and tests/bidirectional_exactness.py."""
    expected_loss, expected_grads = expected
    tolerance = TOLERANCE[torch.float64]
    checked = []
    for grid_shape in grid_list or grids(layers):
        if grid_shape[0] > ROWS or microbatches > ROWS // grid_shape[0]:
            continue   # data.batch_size < dp, and more microbatches than rows, are refused before compute
        loss, grads, plan = run(grid_shape)
        where = f"rank {world.rank}, dp×sp×pp×tp={grid_shape}, M={plan.microbatches} C={plan.chunks}, {what}"
        assert loss == pytest.approx(expected_loss, rel=tolerance["rtol"], abs=tolerance["atol"]), where
        assert grads, where
        for name, (grad, blocks) in grads.items():
            torch.testing.assert_close(grad, take_rows(expected_grads[name], blocks), **tolerance,
                                       msg=f"{where}: {name}")
        checked.append(grid_shape)
    return checked


def check_labelled(cell, task, layers=2, weighted=False, grid_list=None, microbatches=0, chunks=0):
    def run(grid_shape):
        chained = mode_of(cell, grid_shape[1]) == "chain"
        return on_grid(cell, task, layers, grid_shape, weighted, microbatches, chunks if chained else 0)

    check_grids(reference(cell, task, layers, weighted), run, f"{cell} {task}", layers, microbatches, grid_list)
