"""Tests for the process grid and ownership arithmetic (mpirnn.grid): plain integers, no MPI.

cd /work/main && .venv/bin/python -m pytest -q tests/test_grid.py
"""

import itertools

import pytest

from mpirnn.errors import ConfigError
from mpirnn.grid import AXES, Grid, chunk, rows_of, segment_of

SIZES = [0, 1, 2, 3, 5, 7, 8, 16, 17, 31, 100, 128, 1000, 1001]
PARTS = [1, 2, 3, 4, 5, 7, 8, 16, 33]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("parts", PARTS)
def test_chunk_tiles_exactly_with_sizes_within_one(n, parts):
    spans = [chunk(n, parts, i) for i in range(parts)]
    assert spans[0][0] == 0
    assert spans[-1][1] == n
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        assert stop == start  # contiguous, no gap, no overlap
    sizes = [stop - start for start, stop in spans]
    assert all(s >= 0 for s in sizes)
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1
    # Larger parts come first (the documented convention).
    assert sizes == sorted(sizes, reverse=True)
    covered = [x for start, stop in spans for x in range(start, stop)]
    assert covered == list(range(n))


def test_chunk_fewer_items_than_parts():
    spans = [chunk(3, 5, i) for i in range(5)]
    assert spans == [(0, 1), (1, 2), (2, 3), (3, 3), (3, 3)]


def test_chunk_examples():
    assert [chunk(10, 3, i) for i in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [chunk(8, 4, i) for i in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]


@pytest.mark.parametrize("index, parts", [(-1, 3), (3, 3), (0, 0)])
def test_chunk_refuses_a_part_outside(index, parts):
    with pytest.raises(ValueError):
        chunk(10, parts, index)


@pytest.mark.parametrize("world, degrees", [
    (1, dict(dp=1)),
    (4, dict(dp=4)),
    (4, dict(dp=2, sp=2)),
    (12, dict(dp=3, sp=2, pp=1, tp=2)),
    (24, dict(dp=2, sp=3, pp=2, tp=2)),
])
def test_grid_with_matching_product(world, degrees):
    grid = Grid(world, **degrees)
    full = {"dp": -1, "sp": 1, "pp": 1, "tp": 1, **degrees}
    assert grid.shape == tuple(full[a] for a in AXES)
    for axis in AXES:
        assert grid.enabled(axis) == (full[axis] > 1)


@pytest.mark.parametrize("world, degrees", [
    (4, dict(dp=3, sp=1)),
    (1, dict(dp=2)),
    (6, dict(dp=2, sp=2)),
    (8, dict(dp=2, sp=2, pp=1, tp=1)),
    (2, dict(dp=1, sp=1, pp=1, tp=1)),
])
def test_grid_product_must_equal_world_size(world, degrees):
    with pytest.raises(ConfigError) as info:
        Grid(world, **degrees)
    message = str(info.value)
    assert f"the job has {world}" in message
    assert "dp*sp*pp*tp" in message


@pytest.mark.parametrize("world, degrees, axis, expected", [
    (4, dict(), "dp", 4),
    (1, dict(), "dp", 1),
    (12, dict(sp=3), "dp", 4),
    (8, dict(dp=2, sp=-1, tp=2), "sp", 2),
    (6, dict(dp=1, sp=3, pp=-1), "pp", 2),
    (16, dict(dp=2, sp=2, pp=2, tp=-1), "tp", 2),
])
def test_minus_one_is_inferred(world, degrees, axis, expected):
    grid = Grid(world, **degrees)
    assert getattr(grid, axis) == expected
    dp, sp, pp, tp = grid.shape
    assert dp * sp * pp * tp == world


def test_two_minus_ones_refused():
    with pytest.raises(ConfigError, match="only one parallel degree may be -1.*dp.*sp"):
        Grid(4, dp=-1, sp=-1)


@pytest.mark.parametrize("world, degrees", [(4, dict(sp=3)), (5, dict(dp=-1, sp=2)), (6, dict(dp=2, pp=-1, tp=4))])
def test_non_divisible_inference_refused(world, degrees):
    with pytest.raises(ConfigError, match=f"cannot infer .*world size {world} is not divisible"):
        Grid(world, **degrees)


@pytest.mark.parametrize("degrees", [dict(dp=0), dict(sp=-2), dict(tp=0), dict(pp=-5)])
def test_grid_refuses_zero_or_negative_degrees(degrees):
    with pytest.raises(ConfigError, match="must be positive or -1"):
        Grid(4, **degrees)


SHAPES = [(1, 1, 1, 1), (4, 1, 1, 1), (1, 4, 1, 1), (2, 2, 1, 1), (3, 2, 1, 1), (1, 1, 1, 3),
          (2, 3, 2, 2), (2, 1, 3, 1), (1, 2, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_coords_and_rank_of_round_trip(shape):
    world = shape[0] * shape[1] * shape[2] * shape[3]
    grid = Grid(world, *shape)
    seen = set()
    for rank in range(world):
        coords = grid.coords(rank)
        assert list(coords) == list(AXES)
        for axis, degree in zip(AXES, shape):
            assert 0 <= coords[axis] < degree
        assert grid.rank_of(**coords) == rank
        seen.add(tuple(coords.values()))
    # Every coordinate tuple is used exactly once.
    assert seen == set(itertools.product(*(range(d) for d in shape)))


@pytest.mark.parametrize("shape", SHAPES)
def test_tp_varies_fastest_then_pp_sp_dp(shape):
    grid = Grid(shape[0] * shape[1] * shape[2] * shape[3], *shape)
    order = [tuple(grid.coords(r)[a] for a in AXES) for r in range(grid.world_size)]
    # Row-major over (dp, sp, pp, tp): the last axis changes first.
    assert order == list(itertools.product(*(range(d) for d in shape)))


def test_coords_example():
    grid = Grid(12, dp=3, sp=2, pp=1, tp=2)
    assert grid.coords(0) == dict(dp=0, sp=0, pp=0, tp=0)
    assert grid.coords(1) == dict(dp=0, sp=0, pp=0, tp=1)
    assert grid.coords(2) == dict(dp=0, sp=1, pp=0, tp=0)
    assert grid.coords(5) == dict(dp=1, sp=0, pp=0, tp=1)
    assert grid.coords(11) == dict(dp=2, sp=1, pp=0, tp=1)
    assert grid.rank_of(dp=2, sp=1, tp=1) == 11
    assert grid.rank_of() == 0  # missing coordinates are 0


@pytest.mark.parametrize("batch, dp", [(8, 1), (8, 4), (10, 3), (5, 8), (33, 4)])
def test_rows_of_splits_the_global_batch(batch, dp):
    grid = Grid(dp, dp=dp)
    rows = [rows_of(batch, grid, r) for r in range(dp)]
    assert rows == [chunk(batch, dp, r) for r in range(dp)]
    assert [i for start, stop in rows for i in range(start, stop)] == list(range(batch))


@pytest.mark.parametrize("seq_len, sp", [(16, 1), (16, 2), (17, 4), (3, 4), (128, 3)])
def test_segment_of_splits_time(seq_len, sp):
    grid = Grid(sp * 2, dp=2, sp=sp)
    segments = [segment_of(seq_len, grid, r) for r in range(sp)]
    assert segments == [chunk(seq_len, sp, r) for r in range(sp)]
    assert [t for start, stop in segments for t in range(start, stop)] == list(range(seq_len))


def test_rows_and_segments_use_their_own_axis():
    grid = Grid(6, dp=3, sp=2)
    assert rows_of(9, grid, 2) == (6, 9)        # split by dp=3, not sp
    assert segment_of(9, grid, 1) == (5, 9)     # split by sp=2, not dp
    with pytest.raises(ValueError):
        segment_of(9, grid, 2)                  # there is no sp rank 2


@pytest.mark.parametrize("degrees, ranks", [(dict(dp=4), 4), (dict(dp=2, sp=3), 6), (dict(dp=-1, sp=2), 2)])
def test_one_process_for_a_bigger_grid_hints_at_mpirun(degrees, ranks):
    with pytest.raises(ConfigError, match=r"job has 1|world size 1") as info:
        Grid(1, **degrees)
    assert f"`mpirun -n {ranks} python -m mpirnn.train" in str(info.value)


@pytest.mark.parametrize("world, degrees", [(4, dict(dp=3)), (2, dict(dp=1)), (6, dict(sp=4))])
def test_no_mpirun_hint_when_mpirun_was_used(world, degrees):
    with pytest.raises(ConfigError) as info:
        Grid(world, **degrees)
    assert "mpirun" not in str(info.value)
