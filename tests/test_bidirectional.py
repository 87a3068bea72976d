"""Bidirectional layers without MPI: the per-row reversal, PyTorch's parameter names, the
refusals before compute, and the tensor-parallel slices that checkpoints cut by serial name.

    python -m pytest -q tests/test_bidirectional.py
(exactness on every grid: tests/mpi/test_bidirectional_exact.py under mpirun -n 1..4)
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mpirnn.config import load_config
from mpirnn.data.manifest import load_manifest
from mpirnn.errors import ConfigError, DataError
from mpirnn.grid import Grid
from mpirnn.inference.forecasting import roll_forward
from mpirnn.models.bidirectional import flip_rows, reverse_index, run_fused
from mpirnn.models.model import RecurrentModel, build_model
from mpirnn.parallel.plan import make_plan
from mpirnn.parallel.shard import row_blocks, stage_model, take_rows
from mpirnn.training.dataset_fit import check_fit
from support import make_token_dataset


def model(cell="lstm", **extra):
    torch.manual_seed(0)
    return RecurrentModel(cell, hidden=4, layers=2, embed=3, features=2, outputs=5, bidirectional=True,
                          **extra).double()


def test_each_row_reverses_within_its_length_and_back():
    x = torch.arange(10.).view(2, 5, 1)
    index = reverse_index(torch.tensor([3, 5]), 2, 5, "cpu")
    flipped = flip_rows(x, index)
    assert flipped[0, :, 0].tolist() == [2, 1, 0, 3, 4]   # the padding stays after the row
    assert flipped[1, :, 0].tolist() == [9, 8, 7, 6, 5]
    assert torch.equal(flip_rows(flipped, index), x)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_pytorch_names_and_widths(cell):
    m = model(cell)
    names = dict(m.named_parameters())
    assert "layers.0.weight_ih_l0_reverse" in names and "layers.1.bias_hh_l0_reverse" in names
    assert names["layers.1.weight_ih_l0"].shape[1] == 8            # [forward; reverse] in
    assert m.head.in_features == 8 and m.output_width == 8
    assert m.zero_state(3, torch.zeros(1)).shape == (2, 2 * m.parts, 3, 4)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_linear_cells_get_a_reverse_projection(cell):
    names = dict(model(cell).named_parameters())
    assert names["layers.0.linear_reverse.weight"].shape == names["layers.0.linear.weight"].shape


def test_padding_never_reaches_a_row():
    # A row's outputs do not change with what follows its last valid step, in either direction.
    m = model("gru")
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    junk = x.clone()
    junk[0, 4:] = 1e3
    lengths = torch.tensor([4, 6])
    state = torch.zeros(2, 2, 4, dtype=torch.float64)
    clean, _ = run_fused(m.layers[0], "gru", x, state, lengths)
    dirty, _ = run_fused(m.layers[0], "gru", junk, state, lengths)
    torch.testing.assert_close(clean[:, :4], dirty[:, :4], rtol=0, atol=0)
    alone, _ = run_fused(m.layers[0], "gru", x[:1, :4], state[:, :1], None)
    torch.testing.assert_close(clean[0, :4], alone[0], rtol=1e-12, atol=1e-12)


def test_stateful_is_refused():
    with pytest.raises(ConfigError, match="model.bidirectional = true with train.stateful = true"):
        load_config(None, ["model.bidirectional=true", "train.stateful=true"])


@pytest.mark.parametrize("axes, microbatches", [(dict(sp=2), 1), (dict(sp=2, dp=2), 1), (dict(sp=3), 4),
                                                (dict(sp=2, pp=2), 4)])
def test_sequence_parallelism_runs_one_chunk_per_segment(axes, microbatches):
    # Microbatches fill the middle segments' wait (sp > 2) and the stages; two segments swap halves without them.
    grid = Grid(int(np.prod(list(axes.values()))), **axes)
    plan = make_plan(grid, grid.coords(0), batch_size=32, seq_len=64, layers=2, cell="lstm", hidden=4,
                     bidirectional=True)
    assert plan.chunks == 1 and plan.mode == "chain" and plan.microbatches == microbatches
    plan = make_plan(grid, grid.coords(0), batch_size=32, seq_len=64, layers=2, cell="mingru", hidden=4,
                     bidirectional=True)
    assert plan.chunks == 1 and plan.mode == "scan" and plan.microbatches == (4 if grid.pp > 1 else 1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_direction_at_a_time_equals_the_packed_bidirectional_module(cell):
    """Each direction run on its own (what sequence parallelism does), and the reverse one cut into two
    segments with its state carried from the later one, equals PyTorch's packed bidirectional layer."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    from mpirnn.models.bidirectional import run_direction
    torch.manual_seed(0)
    layer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        3, 4, batch_first=True, bidirectional=True).double()
    x, lengths = torch.randn(5, 7, 3, dtype=torch.float64), torch.tensor([7, 3, 1, 5, 7])
    out, _ = layer(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=7)
    zero = torch.zeros(2 if cell == "lstm" else 1, 5, 4, dtype=torch.float64)
    forward, _ = run_direction(layer, cell, x, zero, reverse=False)
    valid = (torch.arange(7)[None] < lengths[:, None])[..., None]
    torch.testing.assert_close(forward * valid, out[..., :4], rtol=1e-12, atol=1e-12)
    late, carried = run_direction(layer, cell, x[:, 3:], zero, True, (lengths - 3).clamp(0, 4))
    early, _ = run_direction(layer, cell, x[:, :3], carried, True, lengths.clamp(0, 3))
    torch.testing.assert_close(torch.cat([early, late], 1), out[..., 4:], rtol=1e-12, atol=1e-12)


def test_chunks_are_refused_and_stages_overlap_by_microbatches():
    grid = Grid(2, pp=2)
    with pytest.raises(ConfigError, match="parallel.chunks = 4 with model.bidirectional"):
        make_plan(grid, grid.coords(0), batch_size=16, seq_len=64, layers=2, cell="lstm", chunks=4, bidirectional=True)
    plan = make_plan(grid, grid.coords(0), batch_size=16, seq_len=64, layers=2, cell="lstm", bidirectional=True)
    assert plan.chunks == 1 and plan.microbatches == 2 and plan.mode == "chain"


def test_a_next_task_is_refused(tmp_path):
    manifest = load_manifest(make_token_dataset(tmp_path / "tokens"))
    cfg = load_config(None, ["model.bidirectional=true", "data.seq_len=8", "data.batch_size=2"])
    with pytest.raises(DataError, match="would see the step it predicts"):
        check_fit(manifest, cfg, Grid(1))


def test_generate_and_forecast_are_refused():
    m = RecurrentModel("gru", hidden=4, layers=1, embed=3, vocab_size=7, bidirectional=True)
    with pytest.raises(ValueError, match="generate needs a one-direction model"):
        m.generate(torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="forecast needs a one-direction model"):
        roll_forward(model("gru"), np.zeros((4, 2)), 2)


def test_the_config_key_builds_a_bidirectional_model():
    cfg = load_config(None, ["model.bidirectional=true", "model.cell=\"gru\"", "model.hidden=4", "model.layers=1"])
    assert build_model(cfg, features=2, outputs=3).bidirectional


class FakeGroup(SimpleNamespace):
    """What a tensor-parallel slice reads of its group (no MPI needed to cut the weights)."""


@pytest.mark.parametrize("cell", ["lstm", "minlstm"])
def test_tensor_parallel_slices_cut_both_directions_by_serial_rows(cell):
    # The checkpoint code gathers and scatters each serial name with row_blocks: the reverse
    # weights must be cut exactly as the slice holds them.
    serial = dict(model(cell).named_parameters())
    grid = Grid(2, tp=2)
    for rank in range(2):
        plan = make_plan(grid, grid.coords(rank), batch_size=4, seq_len=8, layers=2, cell=cell, hidden=4,
                         bidirectional=True)
        group = FakeGroup(size=2, rank=rank, width=2, slice=slice(2 * rank, 2 * rank + 2))
        sliced = stage_model(model(cell), plan, group)
        names = dict(sliced.named_parameters())
        assert set(names) == set(serial)
        for name, param in names.items():
            torch.testing.assert_close(param, take_rows(serial[name], row_blocks(sliced, name, plan)),
                                       rtol=0, atol=0)
