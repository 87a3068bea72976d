"""The per-step cells of tensor parallelism reproduce PyTorch's fused layers (one rank, K = 1).

    cd /work/main && .venv/bin/python -m pytest -q tests/test_tensor_cells.py

The loop of mpirnn/parallel/tensor.py (forward saves what backward needs, backward runs its
own loop) run on the whole layer must give nn.RNN / nn.LSTM / nn.GRU's outputs, final states
and every gradient; the MPI tests then show the slices over K ranks add up to the same.
"""

import pytest
import torch
from mpi4py import MPI
from torch import nn

from mpirnn.models.linear_cells import MinGRU, MinLSTM
from mpirnn.parallel.tensor import ShardedLinearCell, ShardedRecurrentLayer, TensorGroup, gate_blocks

FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
F64 = torch.float64


def inputs(parts, batch=3, steps=9, features=5, hidden=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, features, dtype=F64, generator=generator, requires_grad=True)
    state = (0.5 * torch.randn(parts, batch, hidden, dtype=F64, generator=generator)).requires_grad_()
    weights = torch.randn(batch, steps, hidden, dtype=F64, generator=generator)
    final_weights = torch.randn(parts, batch, hidden, dtype=F64, generator=generator)
    return x, state, weights, final_weights


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_sharded_recurrence_at_one_rank_equals_the_fused_layer(cell):
    torch.manual_seed(3)
    fused = FUSED[cell](5, 6, batch_first=True).double()
    parts = 2 if cell == "lstm" else 1
    x, state, weights, final_weights = inputs(parts)

    # PyTorch's fused layer.
    if cell == "lstm":
        out, (h, c) = fused(x, (state[0:1], state[1:2]))
        final = torch.cat([h, c])
    else:
        out, final = fused(x, state)
    loss = (out * weights).sum() + (final * final_weights).sum()
    expected = torch.autograd.grad(loss, [x, state, *fused.parameters()])

    # The per-step loop on the whole layer (a tp group of one rank).
    x2, state2 = x.detach().clone().requires_grad_(), state.detach().clone().requires_grad_()
    sharded = ShardedRecurrentLayer(fused, cell, TensorGroup(MPI.COMM_SELF, 6))
    out2, final2 = sharded.run(x2, state2)
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final2, final, rtol=1e-12, atol=1e-12)
    loss2 = (out2 * weights).sum() + (final2 * final_weights).sum()
    got = torch.autograd.grad(loss2, [x2, state2, *sharded.parameters()])
    names = ["x", "state", *[n for n, _ in fused.named_parameters()]]
    assert [n for n, _ in sharded.named_parameters()] == names[2:]  # the serial names
    for name, g, e in zip(names, got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", [MinGRU, MinLSTM])
def test_sharded_linear_cell_at_one_rank_equals_the_cell(kind):
    torch.manual_seed(4)
    full = kind(5, 6).double()
    x, state, weights, _ = inputs(1)
    state = state.detach().abs().requires_grad_()
    out, last = full(x, state[0])
    expected = torch.autograd.grad((out * weights).sum() + last.sum(), [x, state, *full.parameters()])
    sharded = ShardedLinearCell(full, TensorGroup(MPI.COMM_SELF, 6))
    x2, state2 = x.detach().clone().requires_grad_(), state.detach().clone().requires_grad_()
    out2, final2 = sharded.run(x2, state2)
    got = torch.autograd.grad((out2 * weights).sum() + final2[0].sum(), [x2, state2, *sharded.parameters()])
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_gate_blocks_tile_every_gate():
    # 4 gates of H = 6 over K = 3 ranks: each rank 2 rows of every gate, together every row once.
    rows = sorted(r for k in range(3) for a, b in gate_blocks(4, 6, k, 3) for r in range(a, b))
    assert rows == list(range(24))
    assert gate_blocks(4, 6, 1, 3) == [(2, 4), (8, 10), (14, 16), (20, 22)]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_packed_float32_product_matches_the_fused_layer(cell):
    # H = 256 is large enough for the oneDNN-packed step product (models/cells.py StepProduct).
    torch.manual_seed(5)
    fused = FUSED[cell](8, 256, batch_first=True)
    sharded = ShardedRecurrentLayer(fused, cell, TensorGroup(MPI.COMM_SELF, 256))
    x = torch.randn(4, 12, 8, requires_grad=True)
    state = torch.zeros(2 if cell == "lstm" else 1, 4, 256)
    expected, _ = fused(x)
    got, _ = sharded.run(x, state)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-5)
