"""The wavefront schedule as data: units of work, the edges between them, and their order.

One schedule serves the sequence chain (segments share weights, states flow forward in
time) and the pipeline chain (stages own layers, activations flow up the stack). A rank at
(segment s, stage p) runs units (m, c) = (microbatch, time chunk). Unit (m, c) needs

- its incoming state: from its own unit (m, c-1), or for c = 0 from unit (m, C-1) of
  segment s-1 (the true initial state on segment 0) — in "chain" mode only; in "scan" mode
  the segments exchange affine summaries inside the unit instead;
- its input activations: from unit (m, c) of stage p-1, or the data on stage 0;

and sends its final state to (s+1, p) when c = C-1, its outputs to (s, p+1). Backward walks
the same edges in reverse with gradients. Every rank runs its units in lexicographic order
(backward: reversed), which is deadlock-free: every unit waits only on units that come
earlier in the order (m, s*C + c, p), so the earliest unfinished one can always run.

Where states pass between segments (sp > 1), the executor runs a unit's layers one at a time
and sends each layer's final state as soon as it is done, so segment s+1 starts a layer, not
a unit, behind segment s. `layer_ticks` simulates the schedule with layer costs of 1 for the
docs and the tests:
    python -m mpirnn.parallel.schedule --sp 2 --pp 2 --microbatches 2 --chunks 2
    python -m mpirnn.parallel.schedule --sp 2 --pp 1 --microbatches 3 --chunks 1 --layers 2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Unit:
    microbatch: int
    chunk: int

    def index(self, chunks: int) -> int:
        """Position in the forward order; unique per step, so it names the unit's messages."""
        return self.microbatch * chunks + self.chunk


def forward_order(microbatches: int, chunks: int) -> list[Unit]:
    return [Unit(m, c) for m in range(microbatches) for c in range(chunks)]


def backward_order(microbatches: int, chunks: int) -> list[Unit]:
    return forward_order(microbatches, chunks)[::-1]


# Message tags. States travel on the sp communicator, activations on the pp communicator, so
# the two families never meet; forward messages are even and their gradients odd. A unit that
# runs its layers one at a time sends one state per layer group (group g of `groups`).
def state_tag(unit: Unit, group: int = 0, groups: int = 1) -> int:
    return 2 * (unit.microbatch * groups + group)


def state_grad_tag(unit: Unit, group: int = 0, groups: int = 1) -> int:
    return state_tag(unit, group, groups) + 1


def activation_tag(unit: Unit, chunks: int) -> int:
    return 2 * unit.index(chunks)


def activation_grad_tag(unit: Unit, chunks: int) -> int:
    return 2 * unit.index(chunks) + 1


@dataclass(frozen=True)
class Position:
    """Where a rank sits in the two chains, and how its segments connect."""

    segment: int
    segments: int
    stage: int
    stages: int
    chain: bool = True  # False: "scan" mode, no state edges between segments

    def state_from_peer(self, unit: Unit) -> bool:
        """The unit's incoming state comes from segment s-1 (else: own previous chunk or initial)."""
        return self.chain and unit.chunk == 0 and self.segment > 0

    def state_to_peer(self, unit: Unit, chunks: int) -> bool:
        return self.chain and unit.chunk == chunks - 1 and self.segment < self.segments - 1

    def inputs_from_peer(self) -> bool:
        return self.stage > 0

    def outputs_to_peer(self) -> bool:
        return self.stage < self.stages - 1


def layer_ticks(segments: int, stages: int, microbatches: int, chunks: int, chain: bool = True,
                layers: int = 1) -> dict:
    """Forward start tick of every layer of every unit, with free messages and a layer costing 1.

    A unit runs `layers` layer groups in turn (the executor runs a stage's layers one at a time
    where states pass between segments, so that segment s+1 can start a layer behind segment
    s). Returns {(s, p, m, c, l): tick}.
    """
    ticks, free = {}, {(s, p): 0 for s in range(segments) for p in range(stages)}
    # Each rank runs its units' layers in order; one starts when its rank is free and its inputs
    # are ready. Visit them in the global order (m, s*C + c, p, l): every input is visited first.
    for m in range(microbatches):
        for s in range(segments):
            for c in range(chunks):
                for p in range(stages):
                    for l in range(layers):
                        ready = [free[(s, p)]]
                        if chain and c == 0 and s > 0:
                            ready.append(ticks[(s - 1, p, m, chunks - 1, l)] + 1)
                        if p > 0 and l == 0:
                            ready.append(ticks[(s, p - 1, m, c, layers - 1)] + 1)
                        ticks[(s, p, m, c, l)] = max(ready)
                        free[(s, p)] = max(ready) + 1
    return ticks


def timeline(segments: int, stages: int, microbatches: int, chunks: int, chain: bool = True,
             layers: int = 1) -> dict:
    """{(s, p): [start tick of each unit in forward order]} (see layer_ticks; a unit is `layers` ticks).

    The backward pass is the mirror image, so the step's length is twice the last finishing tick.
    """
    ticks = layer_ticks(segments, stages, microbatches, chunks, chain, layers)
    return {(s, p): [ticks[(s, p, u.microbatch, u.chunk, 0)] for u in forward_order(microbatches, chunks)]
            for s in range(segments) for p in range(stages)}


def makespan(segments: int, stages: int, microbatches: int, chunks: int, chain: bool = True,
             layers: int = 1) -> int:
    """Forward ticks until the last unit finishes (a layer costs 1, a unit `layers`)."""
    return max(layer_ticks(segments, stages, microbatches, chunks, chain, layers).values()) + 1


def draw(segments: int, stages: int, microbatches: int, chunks: int, chain: bool = True, layers: int = 1) -> str:
    """A text table: one row per rank (segment, stage), one column per tick, `m.c` where a unit
    runs (`m.c/l` for its layer l when units run layer by layer)."""
    ticks = layer_ticks(segments, stages, microbatches, chunks, chain, layers)
    length = max(ticks.values()) + 1
    lines = ["| rank (segment, stage) | " + " | ".join(f"t{t}" for t in range(length)) + " |",
             "|---|" + "---|" * length]
    for s in range(segments):
        for p in range(stages):
            cells = ["·"] * length
            for (s_, p_, m, c, l), tick in ticks.items():
                if (s_, p_) == (s, p):
                    cells[tick] = f"{m}.{c}" if layers == 1 else f"{m}.{c}/{l}"
            lines.append(f"| s{s} p{p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpirnn.parallel.schedule",
                                     description="Print the forward wavefront of a grid (unit costs 1).")
    parser.add_argument("--sp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1,
                        help="layers per stage, run one at a time (what the executor does when sp > 1)")
    parser.add_argument("--scan", action="store_true", help="linear cells with sp > 1: no state chain")
    args = parser.parse_args(argv)
    print(draw(args.sp, args.pp, args.microbatches, args.chunks, chain=not args.scan, layers=args.layers))
    return 0


def cli() -> None:
    """Console-script entry point (`mpirnn-schedule`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
