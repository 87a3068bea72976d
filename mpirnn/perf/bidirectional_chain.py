"""The critical path of bidirectional layers under sequence parallelism: two opposite wavefronts.

    python -m pytest -q tests/test_perf_bidirectional.py

Under sp > 1 a rank runs *tasks*, one direction of one of its layers over one microbatch, in
the order mpirnn/parallel/bidirectional_schedule.py gives it (a simulation with unit costs; the
executor, mpirnn/parallel/bidirectional_wavefront.py, walks that order and backward walks it
reversed). The forward direction of (m, l) on segment s waits for segment s−1's (its state),
the reverse one for segment s+1's, both for the two directions of layer l−1 on the same segment
(from the previous stage, where layer l−1 lives there: the stage hands a microbatch on once both
directions covered it). Here the same order is replayed with each task's real cost and each
message's time: a task starts when its rank is free and what it needs has arrived. With the
order fixed per rank the step is the longest path through the tasks, the same walked forwards or
backwards, so each task carries its forward+backward cost at once (as a unit does in
mpirnn/perf/schedule.py). At sp = 2 the two chains swap halves with no idle task (the Deep
Speech swap): the step is one rank's work plus the messages; beyond, the middle segments wait
until a chain reaches them.

A pipeline whose plan offloads reverse directions (mpirnn/parallel/plan.py `offload_reverse`)
is replayed the same way: an offloaded task costs what it costs on its layer's stage and runs on
the stage below, and a layer that reads a direction run on another stage waits for its message.
"""

from __future__ import annotations

from mpirnn.parallel.bidirectional_schedule import FORWARD, REVERSE, Task, stage_of, task_ticks


def replay(segments: int, stage_layers: list[range], microbatches: int, task_s, state_hop_s: float = 0.0,
           activation_hop_s: float = 0.0, offloaded: tuple = ()) -> tuple[float, float]:
    """(step seconds, the busiest rank's busy seconds) of the schedule with real costs.

    task_s(stage, task): one task's forward+backward seconds on a rank of `stage` (its share of
    the embedding or the head included); state_hop_s: a boundary state's message between
    neighbouring segments (and its gradient back); activation_hop_s: a microbatch's outputs to
    the next stage (and their gradient back); offloaded: the plan's offloaded reverse directions
    (task_s is then given the stage that owns the task's layer, not the one that runs it).
    """
    owner = {l: p for p, layers in enumerate(stage_layers) for l in layers}
    ticks = task_ticks(segments, stage_layers, microbatches, offloaded=offloaded)
    finish: dict = {}
    free: dict = {}
    busy: dict = {}
    for (segment, task), _ in sorted(ticks.items(), key=lambda item: (item[1], item[0][0], item[0][1])):
        stage = stage_of(task, stage_layers, offloaded)
        rank = (segment, stage)
        ready = free.get(rank, 0.0)
        m, l, d = task.microbatch, task.layer, task.direction
        for e in (FORWARD, REVERSE) if l > 0 else ():   # both directions of the layer below
            below = Task(m, l - 1, e)
            hop = 0.0 if stage_of(below, stage_layers, offloaded) == stage else activation_hop_s
            ready = max(ready, finish[(segment, below)] + hop)
        peer = segment - 1 if d == FORWARD else segment + 1
        if 0 <= peer < segments:                   # the incoming state of this direction's chain
            ready = max(ready, finish[(peer, task)] + state_hop_s)
        cost = task_s(owner[l], task)
        finish[(segment, task)] = free[rank] = ready + cost
        busy[rank] = busy.get(rank, 0.0) + cost
    return max(finish.values()), max(busy.values())
