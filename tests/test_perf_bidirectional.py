"""The performance model's bidirectional layers and its long-sequence term (docs/performance.md).

    python -m pytest -q tests/test_perf_bidirectional.py
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from test_perf_model import toy_calibration

from mpirnn.parallel.bidirectional_schedule import bubble as schedule_bubble
from mpirnn.parallel.bidirectional_schedule import task_ticks
from mpirnn.perf.bidirectional_chain import replay
from mpirnn.perf.calibration import Calibration, _extra_per_unit
from mpirnn.perf.ranking import best_microbatches, candidates
from mpirnn.perf.step_model import Layout, Shape, invalid, offloaded_of, predict, stage_tensors

BI = Shape("lstm", layers=2, hidden=16, embed=16, batch=8, seq_len=64, vocab=None, bidirectional=True)
ONE = Shape("lstm", layers=2, hidden=16, embed=16, batch=8, seq_len=64, vocab=None)


def toy(**kw) -> Calibration:
    return Calibration(toy_calibration(**kw))


# ------------------------------------------------------------------ the replay of the two chains


@pytest.mark.parametrize("segments, layers, pp, microbatches", [
    (2, 1, 1, 1), (2, 2, 1, 3), (3, 2, 1, 2), (4, 1, 1, 2), (4, 2, 1, 4), (2, 2, 2, 2), (3, 4, 2, 1)])
def test_replay_with_unit_costs_is_the_schedule(segments, layers, pp, microbatches):
    # Equal tasks and free messages: the replay's step is the simulated schedule's length, its
    # busiest rank the schedule's work, so its bubble is bidirectional_schedule's.
    per_stage = layers // pp
    stages = [range(p * per_stage, (p + 1) * per_stage) for p in range(pp)]
    step, busiest = replay(segments, stages, microbatches, lambda stage, task: 1.0)
    assert step == max(task_ticks(segments, stages, microbatches).values()) + 1
    assert 1 - busiest / step == pytest.approx(schedule_bubble(segments, stages, microbatches))


def test_replay_counts_each_state_message_along_the_chain():
    # sp = 2, one layer, one microbatch: the swap. Each rank runs its own direction, then the other
    # from the state the other rank sent: 2 tasks + one message.
    step, busiest = replay(2, [range(1)], 1, lambda stage, task: 1.0, state_hop_s=0.25)
    assert busiest == 2 and step == pytest.approx(2.25)
    # sp = 4: the chains meet in the middle after one hop each, then run out to the far ends.
    step, _ = replay(4, [range(1)], 1, lambda stage, task: 1.0, state_hop_s=0.25)
    assert step == pytest.approx(4 + 3 * 0.25)


# ------------------------------------------------------------------ the step


def test_a_bidirectional_layer_costs_two_directions_and_the_next_one_reads_both():
    cal = toy(step_per_row_s=1e-4)
    one = predict(ONE, Layout(), cal).step_s
    both = predict(BI, Layout(), cal).step_s
    assert both == pytest.approx(2 * one)   # no factor measured: 2
    # A measured factor applies to every layer; with a cost per input multiply-add layer 1 reads 2H.
    data = toy_calibration(step_per_row_s=1e-4)
    data["compute"]["bidirectional_factor"] = {"lstm": 2.2}
    assert predict(BI, Layout(), Calibration(data)).step_s == pytest.approx(2.2 * one)
    data["compute"]["input_mac_s"] = 1e-9
    wider = predict(BI, Layout(), Calibration(data)).step_s - 2.2 * predict(ONE, Layout(), Calibration(data)).step_s
    assert wider == pytest.approx(2.2 * 8 * 64 * 4 * 16 * 16 * 1e-9, rel=1e-6)   # 16 more inputs per gate row
    # Its parameters: both directions', and the head reads 2H.
    assert sum(stage_tensors(BI, Layout(), 0)) == 2 * (4 * 16 * (16 + 16) + 2 * 4 * 16) \
        + 2 * (4 * 16 * (32 + 16) + 2 * 4 * 16) + 1 * 16 + 16 + 32 * 1 + 1


def test_sp_two_is_the_swap_with_no_bubble():
    cal = toy(step_per_row_s=1e-4)
    serial = predict(BI, Layout(), cal)
    sp2 = predict(BI, Layout(sp=2, microbatches=1), cal)
    # Each rank runs both directions of both layers over half the sequence, no idle task: half the step.
    assert sp2.bubble == pytest.approx(0.0)
    assert sp2.parts["wavefront"] == pytest.approx(serial.parts["wavefront"] / 2)
    # The one-direction chain at M = 1 would idle half a unit (hop 1/2): the bidirectional one must not.
    assert predict(ONE, Layout(sp=2, microbatches=1), cal).bubble > 0.3


def test_sp_four_waits_for_the_chains_to_reach_the_middle():
    cal = toy(step_per_row_s=1e-4)
    one_layer = Shape("lstm", layers=1, hidden=16, embed=16, batch=8, seq_len=64, vocab=None, bidirectional=True)
    serial = predict(one_layer, Layout(), cal).parts["wavefront"]
    for M in (1, 2, 4):
        got = predict(one_layer, Layout(sp=4, microbatches=M), cal)
        lag = (4 - 1) // 2   # docs/parallelism.md: bubble = ⌊(S−1)/2⌋ / (M + ⌊(S−1)/2⌋) with one layer
        assert got.bubble == pytest.approx(lag / (M + lag))
        # every task costs a quarter of the sequence over M microbatches, with no per-call cost here
        assert got.parts["wavefront"] == pytest.approx(serial / 4 / (2 * M) * (2 * M + 2 * lag))


def test_pp_runs_one_chunk_and_microbatches_overlap_the_stages():
    cal = toy(step_per_row_s=1e-4)
    assert "one chunk" in invalid(BI, Layout(pp=2, microbatches=2, chunks=2))
    assert all(c == 1 for _, c in candidates(BI, dict(dp=1, sp=1, pp=2, tp=1)))
    # layer 0 reads 2H inputs as layer 1 does: equal stages, and the plan offloads nothing
    even = replace(BI, embed=2 * BI.hidden)
    assert offloaded_of(even, Layout(pp=2, microbatches=4)) == ()
    serial = predict(even, Layout(), cal).parts["wavefront"]
    got = predict(even, Layout(pp=2, microbatches=4), cal)
    assert got.bubble == pytest.approx(1 / 5)                            # (P−1)/(M+P−1)
    assert got.parts["wavefront"] == pytest.approx(serial / 2 / 4 * 5)   # equal stages here
    assert best_microbatches(BI, dict(dp=1, sp=1, pp=2, tp=1), cal).layout.chunks == 1


def test_offloaded_reverse_directions_shorten_the_replayed_pipeline():
    # W6's stages: layer 1 (reading 2H = 256) costs twice layer 0 (reading 64) per direction. By
    # hand, with task costs 0.5 and 1: stage 1 starts at 1 (microbatch 0's layer 0) and then has
    # 8 tasks of 1 to run, so the step is 9. With microbatches 1 and 3's reverse direction of layer
    # 1 on stage 0 (its order: 0/0 f r, 1/0 f r, 1/1 r, 2/0 f r, 3/0 f r, 3/1 r; 6 in all), stage 1
    # runs 0/1 f r from 1 to 3, 1/1 f to 4, 2/1 f r from 4 (2/0 done) to 6, 3/1 f to 7.
    stages = [range(0, 1), range(1, 2)]
    cost = lambda stage, task: 0.5 if task.layer == 0 else 1.0   # noqa: E731
    assert replay(1, stages, 4, cost) == (9.0, 8.0)
    assert replay(1, stages, 4, cost, offloaded=((), (1, 3))) == (7.0, 6.0)
    w6 = Shape("lstm", layers=2, hidden=128, embed=64, batch=16, seq_len=4096, vocab=None, bidirectional=True)
    assert offloaded_of(w6, Layout(pp=2, microbatches=4)) == ((), (1, 3))
    assert offloaded_of(w6, Layout(pp=2, microbatches=4, sp=2)) == ()   # sp > 1: two chains instead


def test_tp_splits_each_direction():
    data = toy_calibration(step_per_row_s=1e-4)
    data["compute"]["tp_step"] = {"overhead_s": 1e-5, "matmul_factor": 1.0}
    cal = Calibration(data)
    one = predict(ONE, Layout(tp=2), cal).parts["unit_s"][0]
    both = predict(BI, Layout(tp=2), cal).parts["unit_s"][0]
    # every time step of both directions pays the per-step overhead (64 steps x 2 layers x 2 directions)
    assert both - 2 * one == pytest.approx(0.0, abs=1e-9)
    assert both >= 2 * 2 * 64 * 1e-5


# ------------------------------------------------------------------ the long-sequence term


LONG = {"cell": "lstm", "rows": 16, "hidden": 128, "points": [[2**18, 0.0], [2**20, 0.0], [2**22, 40e-9], [2**24, 50e-9]]}


def test_extra_per_unit_is_log_linear_between_points_and_flat_beyond():
    points = LONG["points"]
    assert _extra_per_unit(points, 1000) == 0.0
    assert _extra_per_unit(points, 2**21) == pytest.approx(20e-9)
    assert _extra_per_unit(points, 2**23) == pytest.approx(45e-9)
    assert _extra_per_unit(points, 2**30) == pytest.approx(50e-9)


def test_long_calls_fault_under_glibcs_default_allocator_only():
    data = toy_calibration(step_per_row_s=1e-4)
    without = Calibration(copy.deepcopy(data))
    data["compute"]["long_sequence"] = LONG
    cal = Calibration(copy.deepcopy(data))
    # 8 rows x 32768 steps x 16 units = 2^22 elements: 40 ns more per row-step and hidden unit.
    assert cal.long_sequence_s(8, 32768, 16) == pytest.approx(8 * 16 * 40e-9)
    assert cal.long_sequence_s(8, 64, 16) == 0.0   # a short call: the table's figure
    assert without.long_sequence_s(8, 32768, 16) == 0.0
    long_shape = Shape("lstm", layers=1, hidden=16, embed=16, batch=8, seq_len=32768, vocab=None)
    faulting = predict(long_shape, Layout(malloc="default"), cal).step_s
    kept = predict(long_shape, Layout(malloc="keep"), cal).step_s
    assert faulting - kept == pytest.approx(32768 * 8 * 16 * 40e-9)
    assert kept == pytest.approx(predict(long_shape, Layout(malloc="default"), without).step_s)
    assert predict(long_shape, Layout(), cal).step_s == kept   # training keeps freed memory
    # sp = 2 halves each call: 2^21 elements, 20 ns; the term shrinks per step, so sp gains more than 2x.
    halves = predict(long_shape, Layout(sp=2, microbatches=1, malloc="default"), cal).parts["unit_s"][0] \
        - predict(long_shape, Layout(sp=2, microbatches=1, malloc="keep"), cal).parts["unit_s"][0]
    assert halves == pytest.approx(16384 * 8 * 16 * 20e-9)
