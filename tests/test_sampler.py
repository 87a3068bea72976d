"""Tests for the batch order (mpirnn.data.sampler): a pure function of (seed, step), never of the grid.

cd /work/main && .venv/bin/python -m pytest -q tests/test_sampler.py
"""

import numpy as np
import pytest
import torch
from support import make_token_dataset

from mpirnn.data.sampler import lane_batch, lane_restarts, shuffled_batch
from mpirnn.grid import Grid, rows_of


def test_shuffled_batch_is_deterministic():
    a = [shuffled_batch(step, 8, 100, seed=3) for step in range(30)]
    b = [shuffled_batch(step, 8, 100, seed=3) for step in range(30)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_shuffled_batch_depends_on_the_seed():
    a = np.concatenate([shuffled_batch(step, 8, 100, seed=0) for step in range(5)])
    b = np.concatenate([shuffled_batch(step, 8, 100, seed=1) for step in range(5)])
    assert not np.array_equal(a, b)


def test_shuffled_batch_shape_and_range():
    for step in range(40):
        batch = shuffled_batch(step, 8, 37, seed=0)
        assert batch.shape == (8,)
        assert batch.min() >= 0 and batch.max() < 37


@pytest.mark.parametrize("dp", [1, 2, 3, 4, 8])
def test_rows_of_every_grid_reassemble_the_same_global_batch(dp):
    """A dp=K run sees, over its ranks, exactly the windows of the 1-rank run, in order."""
    batch_size, windows, seed = 8, 250, 7
    grid = Grid(dp, dp=dp)
    for step in range(20):
        serial = shuffled_batch(step, batch_size, windows, seed)
        parts = [shuffled_batch(step, batch_size, windows, seed)[slice(*rows_of(batch_size, grid, r))]
                 for r in range(dp)]
        np.testing.assert_array_equal(np.concatenate(parts), serial)


@pytest.mark.parametrize("batch_size, windows", [(8, 100), (5, 5), (3, 10), (16, 17)])
def test_no_repeats_within_an_epoch(batch_size, windows):
    per_epoch = windows // batch_size
    for epoch in range(3):
        seen = np.concatenate([shuffled_batch(epoch * per_epoch + k, batch_size, windows, seed=1)
                               for k in range(per_epoch)])
        assert len(seen) == per_epoch * batch_size
        assert len(np.unique(seen)) == len(seen), f"a window repeats within epoch {epoch}"


def test_an_epoch_covers_all_windows_when_the_batch_divides():
    seen = np.concatenate([shuffled_batch(k, 10, 50, seed=2) for k in range(5)])
    assert sorted(seen.tolist()) == list(range(50))


def test_epochs_reshuffle():
    per_epoch = 100 // 8
    first = np.concatenate([shuffled_batch(k, 8, 100, seed=0) for k in range(per_epoch)])
    second = np.concatenate([shuffled_batch(per_epoch + k, 8, 100, seed=0) for k in range(per_epoch)])
    assert not np.array_equal(first, second)
    # The first batch of each epoch differs too (not only a rotation of the same order).
    assert not np.array_equal(shuffled_batch(0, 8, 100, 0), shuffled_batch(per_epoch, 8, 100, 0))


def test_the_order_is_shuffled():
    batch = np.concatenate([shuffled_batch(k, 10, 1000, seed=0) for k in range(3)])
    assert not np.array_equal(batch, np.arange(30))
    assert not np.array_equal(np.sort(batch), batch)


def test_too_few_windows_for_a_batch():
    with pytest.raises(ValueError, match="cannot fill a batch"):
        shuffled_batch(0, 8, 7, seed=0)
    with pytest.raises(ValueError, match="cannot fill a batch"):
        lane_batch(0, 8, 7)


@pytest.mark.parametrize("batch_size, windows", [(4, 20), (3, 10), (8, 64), (1, 5)])
def test_lane_batch_reads_consecutive_windows_per_lane(batch_size, windows):
    lane_length = windows // batch_size
    for step in range(3 * lane_length):
        batch = lane_batch(step, batch_size, windows)
        assert batch.shape == (batch_size,)
        for lane in range(batch_size):
            # Lane i owns windows [i*L, (i+1)*L) and reads them in order, wrapping round.
            assert batch[lane] == lane * lane_length + step % lane_length
        if step % lane_length:
            np.testing.assert_array_equal(batch, lane_batch(step - 1, batch_size, windows) + 1)


def test_lanes_are_disjoint():
    lanes = np.stack([lane_batch(step, 4, 22) for step in range(22 // 4)])  # [steps, lanes]
    assert len(np.unique(lanes)) == lanes.size
    assert lanes.max() < 22


@pytest.mark.parametrize("batch_size, windows", [(4, 20), (3, 10), (8, 64)])
def test_lane_restarts_exactly_when_lanes_wrap(batch_size, windows):
    lane_length = windows // batch_size
    for step in range(3 * lane_length + 1):
        expected = step % lane_length == 0
        assert lane_restarts(step, batch_size, windows) == expected
        if step and not expected:
            # Not a restart: each lane's window follows the previous step's.
            assert (lane_batch(step, batch_size, windows) == lane_batch(step - 1, batch_size, windows) + 1).all()
        elif step:
            assert (lane_batch(step, batch_size, windows) < lane_batch(step - 1, batch_size, windows)).all() \
                or lane_length == 1


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return make_token_dataset(tmp_path_factory.mktemp("sampler") / "tokens")


@pytest.mark.parametrize("dp, sp, pp", [(2, 1, 1), (3, 1, 1), (4, 1, 1), (1, 3, 1), (2, 2, 1), (1, 2, 2), (2, 1, 3)])
@pytest.mark.parametrize("stateful", [False, True])
def test_loaders_of_any_grid_read_the_serial_batch(tokens, dp, sp, pp, stateful):
    """Through the real loader: the ranks' rows and segments, put back together, are the 1-rank batch;
    only the first pipeline stage reads inputs and only the last reads targets."""
    from mpirnn.config import load_config
    from mpirnn.data.loader import BatchLoader
    from mpirnn.data.manifest import load_manifest
    from mpirnn.parallel.plan import make_plan

    manifest = load_manifest(tokens)
    cfg = load_config(None, ["data.seq_len=15", "data.batch_size=7", "train.seed=4", "model.layers=3",
                             f"train.stateful={'true' if stateful else 'false'}"])

    def loader(grid, rank):
        plan = make_plan(grid, grid.coords(rank), batch_size=7, seq_len=15, layers=3, cell="lstm", microbatches=1)
        return BatchLoader(manifest, cfg, plan.reads, "cpu", torch.float32)

    serial = loader(Grid(1), 0)
    grid = Grid(dp * sp * pp, dp=dp, sp=sp, pp=pp)
    loaders = [loader(grid, r) for r in range(grid.world_size)]
    try:
        for step in (0, 1, 5, 200):  # 200 is past the first epoch
            want_in, want_out = serial.batch(step)
            got = {}
            for rank, each in enumerate(loaders):
                coords = grid.coords(rank)
                inputs, targets = each.batch(step)
                assert (inputs is not None) == (coords["pp"] == 0)
                assert (targets is not None) == (coords["pp"] == pp - 1)
                if coords["pp"] == 0:
                    got["in", coords["dp"], coords["sp"]] = inputs
                if coords["pp"] == pp - 1:
                    got["out", coords["dp"], coords["sp"]] = targets
            for kind, want in (("in", want_in), ("out", want_out)):
                whole = torch.cat([torch.cat([got[kind, d, s] for s in range(sp)], dim=1) for d in range(dp)], dim=0)
                assert torch.equal(whole, want)
            assert torch.equal(want_in[:, 1:], want_out[:, :-1])  # targets are the next step
    finally:
        for each in [serial, *loaders]:
            each.close()


@pytest.fixture(scope="module")
def short_series(tmp_path_factory):
    """A series of 300 steps: 6 non-overlapping windows of 44 steps, 256 windows at every step."""
    from support import make_series_dataset
    return make_series_dataset(tmp_path_factory.mktemp("sampler") / "series", length=300, features=2)


def test_series_windows_start_at_every_step(short_series):
    """data.windows = auto on a series too short for a batch of cuts: window w is steps
    [w, w + seq_len], so it fills the batch the user asks for."""
    from mpirnn.config import load_config
    from mpirnn.data.loader import BatchLoader, training_stride
    from mpirnn.training.dataset_fit import check_fit
    from mpirnn.data.manifest import load_manifest
    from mpirnn.data.reader import Reader
    from mpirnn.data.sampler import window_stride
    from mpirnn.parallel.plan import make_plan

    # auto: every step only for a series whose cuts cannot fill one batch (300 steps: 6 cuts of 44 < 16).
    assert window_stride("auto", "series", False, 44, 300, 16) == 1
    assert window_stride("auto", "series", False, 44, 300, 4) == 44
    assert window_stride("auto", "tokens", False, 44, 300, 16) == 44
    assert window_stride("every", "tokens", False, 44, 300, 16) == 1
    assert window_stride("auto", "series", True, 44, 300, 16) == 44
    assert window_stride("cut", "series", False, 44, 300, 16) == 44
    manifest = load_manifest(short_series)
    cfg = load_config(None, ["data.seq_len=44", "data.batch_size=16", "train.seed=2"])
    check_fit(manifest, cfg, Grid(1))  # refused before: "holds 6 sequences of 44 steps, fewer than one batch of 16"
    assert Reader(manifest, training_stride(manifest, cfg)).n_windows(44) == manifest.length - 44
    assert Reader(manifest).n_windows(44) == (manifest.length - 1) // 44  # evaluation: non-overlapping
    plan = make_plan(Grid(1), Grid(1).coords(0), batch_size=16, seq_len=44, layers=2, cell="lstm", microbatches=1)
    loader = BatchLoader(manifest, cfg, plan.reads, "cpu", torch.float64)
    raw = Reader(manifest)
    try:
        starts = loader.global_windows(3)
        inputs, targets = loader.batch(3)
        stream = manifest.normalization.normalize(raw.read_span(0, manifest.length))
        for row, start in enumerate(starts):
            assert torch.equal(inputs[row], torch.from_numpy(stream[start:start + 44]))
            assert torch.equal(targets[row], torch.from_numpy(stream[start + 1:start + 45]))
        seen = np.concatenate([loader.global_windows(step) for step in range(16)])
        assert len(np.unique(seen)) == 256  # one epoch covers every start once
    finally:
        loader.close()
        raw.close()


@pytest.mark.parametrize("dp, sp, pp", [(2, 1, 1), (3, 1, 1), (1, 3, 1), (2, 2, 1), (1, 2, 2)])
def test_every_step_windows_are_the_same_on_any_grid(short_series, dp, sp, pp):
    from mpirnn.config import load_config
    from mpirnn.data.loader import BatchLoader
    from mpirnn.data.manifest import load_manifest
    from mpirnn.parallel.plan import make_plan

    manifest = load_manifest(short_series)
    cfg = load_config(None, ["data.seq_len=44", "data.batch_size=12", "train.seed=4", "model.layers=2",
                             "data.windows=every"])

    def loader(grid, rank):
        plan = make_plan(grid, grid.coords(rank), batch_size=12, seq_len=44, layers=2, cell="lstm", microbatches=1)
        return BatchLoader(manifest, cfg, plan.reads, "cpu", torch.float32)

    serial, grid = loader(Grid(1), 0), Grid(dp * sp * pp, dp=dp, sp=sp, pp=pp)
    loaders = [loader(grid, r) for r in range(grid.world_size)]
    try:
        for step in (0, 7, 30):
            want_in, _ = serial.batch(step)
            got = {(grid.coords(r)["dp"], grid.coords(r)["sp"]): each.batch(step)[0]
                   for r, each in enumerate(loaders) if grid.coords(r)["pp"] == 0}
            whole = torch.cat([torch.cat([got[d, s] for s in range(sp)], dim=1) for d in range(dp)], dim=0)
            assert torch.equal(whole, want_in)
    finally:
        for each in [serial, *loaders]:
            each.close()
