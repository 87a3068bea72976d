"""The schedule of bidirectional layers under sequence parallelism (mpirnn/parallel/bidirectional_schedule.py):
every task starts after what it needs, at sp = 2 the two directions swap halves with no idle tick
(the Deep Speech swap), and the linear cells' scan keeps one order on every segment.

    python -m pytest -q tests/test_bidirectional_schedule.py
"""

from __future__ import annotations

import pytest

from mpirnn.parallel.bidirectional_schedule import FORWARD, REVERSE, Task, bubble, rank_order, task_ticks


def stages(layers, pp):
    from mpirnn.parallel.plan import layers_of
    return [range(*layers_of(layers, pp, p)) for p in range(pp)]


@pytest.mark.parametrize("sp, pp, m, layers", [(2, 1, 1, 2), (3, 1, 2, 2), (4, 2, 3, 3), (3, 2, 1, 2)])
def test_every_task_starts_after_what_it_needs(sp, pp, m, layers):
    ticks = task_ticks(sp, stages(layers, pp), m)
    for (s, task), tick in ticks.items():
        b, l = task.microbatch, task.layer
        if l > 0:
            assert tick > max(ticks[(s, Task(b, l - 1, FORWARD))], ticks[(s, Task(b, l - 1, REVERSE))])
        if task.direction == FORWARD and s > 0:
            assert tick > ticks[(s - 1, task)]
        if task.direction == REVERSE and s < sp - 1:
            assert tick > ticks[(s + 1, task)]
    # one task per rank and tick
    for p, layers_here in enumerate(stages(layers, pp)):
        for s in range(sp):
            mine = [tick for (s_, task), tick in ticks.items() if s_ == s and task.layer in layers_here]
            assert len(mine) == len(set(mine)) == 2 * m * len(layers_here)


@pytest.mark.parametrize("m, layers", [(1, 1), (1, 3), (4, 2)])
def test_two_segments_swap_halves_with_no_idle_tick(m, layers):
    assert bubble(2, stages(layers, 1), m) == 0
    assert rank_order(0, 2, stages(layers, 1), 0, m)[0] == Task(0, 0, FORWARD)
    assert rank_order(1, 2, stages(layers, 1), 0, m)[0] == Task(0, 0, REVERSE)


def test_microbatches_fill_the_longer_chains():
    assert bubble(4, stages(2, 1), 4) < bubble(4, stages(2, 1), 1)


def test_the_scan_keeps_one_order_on_every_segment():
    orders = [rank_order(s, 3, stages(2, 1), 0, 2, scan=True) for s in range(3)]
    assert orders[0] == orders[1] == orders[2] == sorted(orders[0])


@pytest.mark.parametrize("sp", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("m", [1, 2, 3, 8])
def test_one_layer_bubble_is_half_the_chain_to_the_middle(sp, m):
    # docs/parallelism.md, "Bidirectional layers": floor((S-1)/2) / (M + floor((S-1)/2))
    lag = (sp - 1) // 2
    assert bubble(sp, stages(1, 1), m) == pytest.approx(lag / (m + lag))
