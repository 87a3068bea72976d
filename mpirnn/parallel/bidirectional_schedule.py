"""The schedule of bidirectional layers across ranks, as data: tasks, their order, the bubble.

A *task* is one direction of one layer over one microbatch on one segment. The forward
direction of (microbatch m, layer l) on segment s needs the forward state of segment s-1; the
reverse direction needs the reverse state of segment s+1 (the last segment starts it from the
initial state, the first starts the forward one); both need layer l-1's outputs of m, both
directions, on their own segment (from the previous stage where layer l-1 lives there). So the
two chains start at the two ends of the sequence at once.

Each rank runs its tasks in the order of a simulation with unit costs and free messages: at
every tick every rank starts the first of its ready tasks in (microbatch, layer, direction)
order. A task always starts after the tasks it needs, so walking each rank's list in tick
order can never deadlock (the earliest unfinished task in tick order can always run), and
backward walks them in reverse. At sp = 2 this is the Deep Speech swap: segment 0 runs the
forward direction of its half while segment 1 runs the reverse of its half, then each runs the
other direction from the state the other sent, with no idle tick.

A pipeline at sp = 1 may move the reverse direction of stage p's first layer, for some
microbatches, onto stage p-1 (the plan's `offloaded`, `stage_of`): there it needs only the
stage's own top layer of that microbatch, and it runs beside stage p's forward direction.

Linear cells (the cross-rank scan, "scan" mode) run each direction of a layer as one collective
of all segments of a stage, so every segment of a stage walks the same fixed order
(microbatch, layer, forward then reverse).

    python -m mpirnn.parallel.bidirectional_schedule --sp 3 --microbatches 2 --layers 2
    python -m pytest -q tests/test_bidirectional_schedule.py
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass

FORWARD, REVERSE = 0, 1


@dataclass(frozen=True, order=True)
class Task:
    microbatch: int
    layer: int       # the layer's index in the whole stack
    direction: int   # FORWARD or REVERSE


def stage_of(task: Task, stage_layers: list[range], offloaded: tuple = ()) -> int:
    """The pipeline stage that runs `task`: its layer's, or the one below where the plan offloaded
    the reverse direction of a stage's first layer for this microbatch (mpirnn/parallel/plan.py)."""
    for p, layers in enumerate(stage_layers):
        if task.layer in layers:
            lent = (task.direction == REVERSE and task.layer == layers.start and p < len(offloaded)
                    and task.microbatch in offloaded[p])
            return p - 1 if lent else p
    raise ValueError(f"layer {task.layer} is on no stage")


def task_ticks(segments: int, stage_layers: list[range], microbatches: int, scan: bool = False,
               offloaded: tuple = ()) -> dict:
    """{(segment, task): start tick} of every task of every rank, a task costing one tick.

    `stage_layers`: each pipeline stage's layers; `offloaded`: the plan's offloaded reverse
    directions (each runs on the stage below its layer's). scan: no state edges between segments,
    and each rank keeps the fixed (microbatch, layer, direction) order.
    """
    pending = {(s, p): [] for s in range(segments) for p in range(len(stage_layers))}
    for m in range(microbatches):
        for layers in stage_layers:
            for l in layers:
                for d in (FORWARD, REVERSE):
                    task = Task(m, l, d)
                    for s in range(segments):
                        pending[(s, stage_of(task, stage_layers, offloaded))].append(task)
    for tasks in pending.values():
        tasks.sort()
    start: dict = {}

    def done(segment, task, tick):
        return (segment, task) in start and start[(segment, task)] < tick

    def ready(segment, task, tick):
        m, l, d = task.microbatch, task.layer, task.direction
        if l > 0 and not (done(segment, Task(m, l - 1, FORWARD), tick) and done(segment, Task(m, l - 1, REVERSE), tick)):
            return False
        if scan:
            return True
        if d == FORWARD and segment > 0:
            return done(segment - 1, task, tick)
        if d == REVERSE and segment < segments - 1:
            return done(segment + 1, task, tick)
        return True

    tick, total = 0, sum(map(len, pending.values()))
    while len(start) < total:
        picked = []
        for (segment, _), tasks in pending.items():
            for task in tasks[:1] if scan else tasks:
                if ready(segment, task, tick):
                    picked.append((segment, task, tasks))
                    break
        for segment, task, tasks in picked:
            start[(segment, task)] = tick
            tasks.remove(task)
        tick += 1
        if tick > 4 * total + 4:   # every tick starts at least one task while any is left
            raise RuntimeError("bidirectional schedule: no task could start (a dependency cycle)")
    return start


def rank_order(segment: int, segments: int, stage_layers: list[range], stage: int, microbatches: int,
               scan: bool = False, offloaded: tuple = ()) -> list[Task]:
    """The tasks rank (segment, stage) runs, in the order it runs them (backward: reversed)."""
    return list(_rank_order(segment, segments, tuple(stage_layers), stage, microbatches, scan, offloaded))


@functools.lru_cache(maxsize=64)   # a run builds an executor per distinct step length (Plan.for_length)
def _rank_order(segment, segments, stage_layers, stage, microbatches, scan, offloaded) -> tuple:
    ticks = task_ticks(segments, list(stage_layers), microbatches, scan, offloaded)
    mine = [(tick, task) for (s, task), tick in ticks.items()
            if s == segment and stage_of(task, list(stage_layers), offloaded) == stage]
    return tuple(task for _, task in sorted(mine))


def bubble(segments: int, stage_layers: list[range], microbatches: int, scan: bool = False,
           offloaded: tuple = ()) -> float:
    """Idle fraction of the forward pass (backward mirrors it) with equal task costs: one minus the
    busiest rank's work over the makespan."""
    ticks = task_ticks(segments, stage_layers, microbatches, scan, offloaded)
    work = max(sum(1 for (s, task) in ticks if stage_of(task, stage_layers, offloaded) == p)
               for p in range(len(stage_layers))) // segments
    return 1 - work / (max(ticks.values()) + 1)


def draw(segments: int, stage_layers: list[range], microbatches: int, scan: bool = False,
         offloaded: tuple = ()) -> str:
    """A text table: one row per rank, one column per tick, `m/l f|r` where a task runs."""
    ticks = task_ticks(segments, stage_layers, microbatches, scan, offloaded)
    length = max(ticks.values()) + 1
    lines = ["| rank (segment, stage) | " + " | ".join(f"t{t}" for t in range(length)) + " |",
             "|---|" + "---|" * length]
    for s in range(segments):
        for p, layers in enumerate(stage_layers):
            cells = ["·"] * length
            for (s_, task), tick in ticks.items():
                if s_ == s and stage_of(task, stage_layers, offloaded) == p:
                    cells[tick] = f"{task.microbatch}/{task.layer} {'fr'[task.direction]}"
            lines.append(f"| s{s} p{p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpirnn.parallel.bidirectional_schedule",
                                     description="Print the forward schedule of bidirectional layers "
                                                 "(`m/l f|r`: microbatch/layer, forward or reverse; tasks cost 1).")
    parser.add_argument("--sp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2, help="layers of the whole stack")
    parser.add_argument("--scan", action="store_true", help="linear cells: each direction a collective of the segments")
    parser.add_argument("--embed", type=int, default=0,
                        help="the first layer's input width; with --hidden, a pipeline at sp = 1 offloads "
                             "reverse directions to balance its stages as the plan does")
    parser.add_argument("--hidden", type=int, default=0)
    args = parser.parse_args(argv)
    from mpirnn.parallel.plan import layers_of, pipeline_offloads
    stages = [range(*layers_of(args.layers, args.pp, p)) for p in range(args.pp)]
    offloaded = () if args.scan else pipeline_offloads("lstm", args.layers, args.embed, args.hidden, args.sp,
                                                       args.pp, 1, args.microbatches)
    print(draw(args.sp, stages, args.microbatches, args.scan, offloaded))
    print(f"\nbubble: {bubble(args.sp, stages, args.microbatches, args.scan, offloaded):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
