"""The plan and the schedule: who runs what, in which order, refused when it cannot be exact.

Plain integers, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_plan.py
"""

import itertools

import pytest

from mpirnn.errors import ConfigError
from mpirnn.grid import Grid
from mpirnn.parallel.plan import (CHUNKS_PER_STAGE, MAX_UNITS, MIN_AUTO_CHUNK_STEPS, bubble, check_grid_fits,
                                  offload_reverse, spread,
                                  layers_of, make_plan, resolve_chunks, resolve_microbatches)
from mpirnn.parallel.schedule import (Position, Unit, activation_grad_tag, activation_tag, backward_order, draw,
                                      forward_order, makespan, state_grad_tag, state_tag, timeline)


@pytest.mark.parametrize("layers, pp", [(2, 2), (4, 3), (4, 4), (5, 2), (7, 3), (1, 1)])
def test_stages_own_consecutive_layers_differing_by_at_most_one(layers, pp):
    spans = [layers_of(layers, pp, p) for p in range(pp)]
    assert spans[0][0] == 0 and spans[-1][1] == layers
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    sizes = [b - a for a, b in spans]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_more_stages_than_layers_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"parallel.pp = 3 but model.layers = 2.*parallel.pp <= 2"):
        check_grid_fits(Grid(3, dp=1, pp=3), layers=2, seq_len=10)


def test_hidden_not_divisible_by_tp_is_refused_with_the_nearest_sizes():
    with pytest.raises(ConfigError, match=r"model.hidden = 100 is not divisible by parallel.tp = 3.*"
                                          r"use model.hidden = 99 or 102, or parallel.tp = 2, 4, 5"):
        check_grid_fits(Grid(3, dp=1, tp=3), layers=2, seq_len=10, hidden=100)
    check_grid_fits(Grid(4, dp=1, tp=4), layers=2, seq_len=10, hidden=100)
    grid = Grid(4, dp=1, tp=4)
    spans = [make_plan(grid, grid.coords(r), batch_size=2, seq_len=10, layers=2, cell="lstm", hidden=100).hidden
             for r in range(4)]
    assert spans == [(0, 25), (25, 50), (50, 75), (75, 100)]


def test_automatic_microbatches():
    # The sp chain overlaps through microbatches: 2 to 8, at least 8 rows each.
    assert [resolve_microbatches(0, rows=r, sp=2) for r in (2, 3, 31, 32, 200)] == [2, 2, 3, 4, 8]
    # Without sp (dp only, or pp, which overlaps through chunks) one microbatch is enough.
    assert resolve_microbatches(0, rows=32, sp=1, pp=4) == 1
    # Scan mode (linear cells, sp > 1) overlaps only pipeline stages through microbatches.
    assert resolve_microbatches(0, rows=32, sp=2, pp=1, mode="scan") == 1
    assert resolve_microbatches(0, rows=32, sp=2, pp=2, mode="scan") == 4
    # Batch size 1: one microbatch, chosen by itself (pp overlaps through chunks; along the sp chain
    # the next segment starts a layer behind, issue 21: measured 1.31x at sp=2 on a 2-layer LSTM).
    assert resolve_microbatches(0, rows=1, sp=2, pp=2) == 1
    assert resolve_microbatches(0, rows=1, sp=2) == 1
    assert resolve_microbatches(0, rows=1, sp=4, mode="scan") == 1


def test_microbatch_refusals():
    with pytest.raises(ConfigError, match="microbatches = 9 but each data-parallel group has only 3 row"):
        resolve_microbatches(9, rows=3, sp=2)
    with pytest.raises(ConfigError, match="at most"):
        resolve_microbatches(MAX_UNITS + 1, rows=10**6, sp=2)
    assert resolve_microbatches(3, rows=3, sp=1) == 3  # asked for: fine, exact either way
    # The chain sends one state per layer and microbatch, each with its own tag: refused alike on every rank.
    grid = Grid(4, sp=2, pp=2)
    for rank in range(4):
        with pytest.raises(ConfigError, match=r"parallel.microbatches x layers per pipeline stage = 9000 x 2"):
            make_plan(grid, grid.coords(rank), batch_size=9000, seq_len=10, layers=3, cell="gru", microbatches=9000)
    make_plan(grid, grid.coords(0), batch_size=9000, seq_len=10, layers=3, cell="mingru", microbatches=9000)  # no chain


def test_automatic_chunks():
    assert resolve_chunks(0, shortest_segment=4096, pp=2, microbatches=1, mode="chain") == CHUNKS_PER_STAGE
    assert resolve_chunks(0, shortest_segment=4096, pp=3, microbatches=2, mode="chain") == CHUNKS_PER_STAGE
    assert resolve_chunks(0, shortest_segment=4096, pp=1, microbatches=1, mode="chain") == 1
    # Never shorter than MIN_AUTO_CHUNK_STEPS steps, never fewer than one chunk.
    assert resolve_chunks(0, shortest_segment=40, pp=4, microbatches=1, mode="chain") == 40 // MIN_AUTO_CHUNK_STEPS
    assert resolve_chunks(0, shortest_segment=5, pp=4, microbatches=1, mode="chain") == 1
    assert resolve_chunks(7, shortest_segment=7, pp=1, microbatches=1, mode="chain") == 7


def test_chunk_refusals():
    with pytest.raises(ConfigError, match=r"parallel.chunks = 8 but the shortest time segment has 7"):
        resolve_chunks(8, shortest_segment=7, pp=2, microbatches=1, mode="chain")
    with pytest.raises(ConfigError, match=r"parallel.chunks = 2: linear cells with parallel.sp > 1"):
        resolve_chunks(2, shortest_segment=100, pp=2, microbatches=1, mode="scan")
    with pytest.raises(ConfigError, match=r"units per step"):
        resolve_chunks(100, shortest_segment=1000, pp=2, microbatches=200, mode="chain")
    assert resolve_chunks(0, shortest_segment=100, pp=2, microbatches=4, mode="scan") == 1


def every_grid(n):
    for dp, sp in itertools.product(range(1, n + 1), repeat=2):
        if n % (dp * sp) == 0:
            yield dp, sp, n // (dp * sp)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8])
def test_plans_of_every_rank_tile_rows_time_and_layers(n):
    batch, seq_len, layers = 7, 23, 4
    for dp, sp, pp in every_grid(n):
        if dp > batch:
            continue  # refused earlier (data.batch_size < parallel.dp: mpirnn/training/dataset_fit.py check_fit)
        if pp > layers:
            with pytest.raises(ConfigError):
                make_plan(Grid(n, dp=dp, sp=sp, pp=pp), Grid(n, dp=dp, sp=sp, pp=pp).coords(0), batch_size=batch,
                          seq_len=seq_len, layers=layers, cell="lstm", microbatches=1)
            continue
        grid = Grid(n, dp=dp, sp=sp, pp=pp)
        plans = [make_plan(grid, grid.coords(r), batch_size=batch, seq_len=seq_len, layers=layers, cell="gru",
                           microbatches=1, chunks=2) for r in range(n)]
        cells = {(row, t, layer) for p in plans for row in range(*p.rows) for t in range(*p.segment)
                 for layer in range(*p.layers)}
        assert len(cells) == batch * seq_len * layers  # every (row, step, layer) run ...
        assert sum(p.local_rows * p.local_steps * (p.layers[1] - p.layers[0]) for p in plans) == len(cells)  # once
        for p in plans:
            steps = p.chunk_steps()
            assert [s.start for s in steps][0] == 0 and steps[-1].stop == p.local_steps
            assert p.first_stage == (p.coords["pp"] == 0) and p.last_stage == (p.coords["pp"] == pp - 1)


def test_linear_cells_with_sp_use_the_scan_and_no_chunks():
    grid = Grid(4, dp=1, sp=2, pp=2)
    plan = make_plan(grid, grid.coords(0), batch_size=16, seq_len=100, layers=2, cell="mingru")
    assert plan.mode == "scan" and plan.chunks == 1 and plan.microbatches == 2
    plan = make_plan(Grid(2, dp=1, pp=2), {"dp": 0, "sp": 0, "pp": 1, "tp": 0}, batch_size=16, seq_len=100,
                     layers=2, cell="minlstm")
    assert plan.mode == "chain" and plan.chunks > 1  # sp = 1: linear cells pass states chunk to chunk


def test_orders_and_tags():
    units = forward_order(3, 2)
    assert units == [Unit(m, c) for m in range(3) for c in range(2)]
    assert backward_order(3, 2) == units[::-1]
    assert [u.index(2) for u in units] == list(range(6))
    tags = {activation_tag(u, 2) for u in units} | {activation_grad_tag(u, 2) for u in units}
    assert len(tags) == 12 and max(tags) < 32768
    assert {state_tag(Unit(m, 0)) for m in range(3)}.isdisjoint({state_grad_tag(Unit(m, 0)) for m in range(3)})
    # One state per layer group: every (microbatch, group) has its own pair of tags.
    grouped = [f(Unit(m, 0), g, 3) for m in range(4) for g in range(3) for f in (state_tag, state_grad_tag)]
    assert sorted(grouped) == list(range(24))
    assert activation_grad_tag(Unit(MAX_UNITS - 1, 0), 1) <= 32767


def test_edges_of_a_position():
    middle = Position(segment=1, segments=3, stage=1, stages=3)
    assert middle.state_from_peer(Unit(0, 0)) and not middle.state_from_peer(Unit(0, 1))
    assert middle.state_to_peer(Unit(0, 3), chunks=4) and not middle.state_to_peer(Unit(0, 2), chunks=4)
    assert middle.inputs_from_peer() and middle.outputs_to_peer()
    first = Position(segment=0, segments=3, stage=0, stages=3)
    assert not first.state_from_peer(Unit(0, 0)) and not first.inputs_from_peer()
    scan = Position(segment=1, segments=3, stage=0, stages=1, chain=False)
    assert not scan.state_from_peer(Unit(0, 0)) and not scan.state_to_peer(Unit(0, 0), chunks=1)


@pytest.mark.parametrize("sp, pp, m, c", [(1, 2, 1, 4), (2, 1, 4, 1), (2, 2, 2, 2), (3, 2, 2, 3), (1, 4, 1, 8),
                                          (3, 3, 3, 2), (4, 1, 1, 1), (1, 1, 5, 5)])
def test_bubble_formula_matches_the_simulated_wavefront(sp, pp, m, c):
    ticks = makespan(sp, pp, m, c)
    assert ticks == m * c + (sp - 1) * c + (pp - 1)
    assert bubble(sp, pp, m, c) == pytest.approx(1 - m * c / ticks)
    # Units of L layers, run one at a time: segment s+1 starts a layer (not a unit) after segment s's last chunk.
    for layers in (2, 3):
        ticks = makespan(sp, pp, m, c, layers=layers)
        assert ticks == layers * m * c + (sp - 1) * ((c - 1) * layers + 1) + (pp - 1) * layers
        assert bubble(sp, pp, m, c, layers=layers) == pytest.approx(1 - layers * m * c / ticks)


@pytest.mark.parametrize("sp, pp, m", [(2, 2, 3), (3, 2, 1), (4, 3, 2)])
def test_scan_mode_only_chains_stages(sp, pp, m):
    assert makespan(sp, pp, m, 1, chain=False) == m + pp - 1
    assert bubble(sp, pp, m, 1, "scan") == pytest.approx((pp - 1) / (m + pp - 1))


def test_pipeline_with_chunks_overlaps_at_one_microbatch():
    # The point of chunks: stage 1 runs chunk c-1 while stage 0 runs chunk c.
    starts = timeline(1, 2, 1, 4)
    assert starts[(0, 0)] == [0, 1, 2, 3] and starts[(0, 1)] == [1, 2, 3, 4]
    table = draw(1, 2, 1, 4)
    assert "| s0 p1 | · | 0.0 | 0.1 | 0.2 | 0.3 |" in table


def test_offloaded_reverse_directions_balance_the_stages():
    # W6: one direction of layer 0 costs 64 + 128, of layer 1 256 + 128, so stage 1 does twice
    # stage 0's work; two of four microbatches' reverse direction of layer 1 on stage 0 even them out
    # (4 x 384 + 2 x 384 on each).
    w6 = [range(0, 1), range(1, 2)]
    assert offload_reverse([64, 256], 128, w6, 4) == ((), (1, 3))
    assert offload_reverse([64, 256], 128, w6, 2) == ((), (1,))
    assert offload_reverse([64, 256], 128, w6, 1) == ((), ())      # 768 either way: nothing gained
    assert offload_reverse([256, 256], 128, w6, 4) == ((), ())     # equal stages
    # three stages of 17, 36, 36 per direction (embed 5, H = 12), 3 microbatches: 102, 216, 216;
    # moving 2 from stage 1 down and 1 from stage 2 down gives 174, 180, 180, the least busiest
    # stage, which no single boundary's move reaches.
    assert offload_reverse([5, 24, 24], 12, [range(0, 1), range(1, 2), range(2, 3)], 3) == ((), (1, 2), (2,))
    assert spread(4, 8) == (1, 3, 5, 7) and spread(1, 4) == (3,) and spread(5, 5) == (0, 1, 2, 3, 4)


def test_only_bidirectional_pipelines_of_fused_cells_at_sp_1_offload():
    def plan(cell="lstm", bidirectional=True, embed=64, **axes):
        axes = {"pp": 2, **axes}
        ranks = axes["pp"] * axes.get("sp", 1) * axes.get("tp", 1)
        grid = Grid(ranks, **axes)
        return make_plan(grid, grid.coords(ranks - 1), batch_size=16, seq_len=64, layers=2, cell=cell,
                         microbatches=4, hidden=128, bidirectional=bidirectional, embed=embed)
    assert plan().offloaded == ((), (1, 3))
    assert plan(embed=0).offloaded == ()              # no width given: nothing to balance by
    assert plan(bidirectional=False).offloaded == ()
    assert plan(cell="mingru").offloaded == ()
    assert plan(sp=2).offloaded == ()
    assert plan(tp=2).offloaded == ()
