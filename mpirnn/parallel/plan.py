"""What this rank runs: its rows, time segment, layers, microbatches and time chunks.

Pure arithmetic on integers (no MPI, no torch), so it is tested without processes:
    python -m pytest -q tests/test_plan.py

A rank at grid coordinates (dp d, sp s, pp p, tp k) owns rows `rows_of(batch, d)` of the
global batch, time steps `segment_of(seq_len, s)` of every sequence, layers `layers_of(layers, p)`
of the stack and hidden units [k*H/K, (k+1)*H/K) of each of those layers. It cuts its rows into M microbatches and its segment into C time chunks; one
*unit* of work is (microbatch, chunk). How segments connect is the plan's *mode*:

- "chain": segment s starts from the final states of segment s-1 (rnn, lstm, gru, and the
  linear cells when sp = 1). Units form the 2-D wavefront of docs/parallelism.md.
- "scan": linear cells with sp > 1. Every segment runs at once and the ranks of a stage
  exchange affine summaries per layer (mpirnn/parallel/linear_scan.py); C is 1.

Bidirectional layers run one chunk per segment (`check_bidirectional`); with sp > 1 their two
directions are two opposite chains ("chain") or two cross-rank scans ("scan") per layer
(mpirnn/parallel/bidirectional_wavefront.py; docs/parallelism.md, "Bidirectional layers").
A bidirectional stage hands a microbatch on only once both directions covered it, so time
chunks cannot even out stages of unequal cost; instead stage p-1 may run the reverse direction
of stage p's first layer for some microbatches (`offload_reverse`, the plan's `offloaded`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from mpirnn.data.reads import Reads
from mpirnn.errors import ConfigError
from mpirnn.grid import Grid, chunk, rows_of, segment_of

LINEAR_CELLS = ("mingru", "minlstm")
MAX_AUTO_MICROBATCHES = 8
# Fused RNN kernels lose efficiency on very thin batches (on one CPU a 4-row LSTM microbatch
# ran 23% slower per row than 8 rows), which costs more than the smaller bubble of more
# microbatches gains: automatic microbatches keep at least this many rows each.
MIN_AUTO_ROWS = 8
# Automatic chunks aim for M*C >= CHUNKS_PER_STAGE * (P-1), a bubble of at most 1/9 with the
# default, and never cut chunks shorter than MIN_AUTO_CHUNK_STEPS (each chunk is a fused call
# per layer and two messages, so very short chunks cost more in overhead than they save).
CHUNKS_PER_STAGE = 8
MIN_AUTO_CHUNK_STEPS = 16
# Message tags are 2u and 2u+1 for unit u = m*C + c (activations) and for u = m*G + g (the
# boundary state of layer group g of microbatch m), and MPI guarantees tags up to 32767.
MAX_UNITS = 16_000


def layers_of(layers: int, pp: int, stage: int) -> tuple[int, int]:
    """The layers [start, stop) pipeline stage `stage` owns (stage sizes differ by at most one)."""
    return chunk(layers, pp, stage)


# Offloaded reverse directions add four kinds of message per microbatch on the pp communicator,
# tagged after the activations' 2M tags (mpirnn/parallel/bidirectional_wavefront.py `lent_tag`).
MAX_OFFLOAD_MICROBATCHES = 4000   # 2M + 4M tags stay under MPI's guaranteed 32767


def offload_reverse(input_widths: list[int], hidden: int, stage_layers: list[range],
                    microbatches: int) -> tuple[tuple[int, ...], ...]:
    """Per stage p, the microbatches whose reverse direction of p's first layer stage p-1 runs.

    One direction of layer l costs about (its input width + hidden) x gates x hidden per row and
    step, so with one layer per stage the stage above a layer that reads 2H wide outputs does
    about twice the work of a first stage reading a narrow input (issue W6: 64 against 256).
    Stage p-1 can run the reverse direction of p's first layer as soon as its own top layer is
    done, in parallel with p's forward direction, using a copy of those weights that p sends
    each step (and whose gradients it sends back). Counts are chosen to minimize the busiest
    stage's work (every combination where there are at most 20,000, else coordinate descent over
    the boundaries; fewest offloads on a tie), and spread evenly over the microbatches so that
    neither stage waits long for the other. Nothing is offloaded with one microbatch.

        python -m mpirnn.parallel.bidirectional_schedule --sp 1 --pp 2 --microbatches 4 --embed 64 --hidden 128
    """
    P = len(stage_layers)
    if P < 2 or microbatches < 2 or microbatches > MAX_OFFLOAD_MICROBATCHES:
        return ((),) * P
    cost = [width + hidden for width in input_widths]
    base = [2 * microbatches * sum(cost[l] for l in layers) for layers in stage_layers]

    def busiest(counts: list[int]) -> int:
        loads = list(base)
        for p in range(1, P):
            moved = counts[p] * cost[stage_layers[p].start]
            loads[p] -= moved
            loads[p - 1] += moved
        return max(loads)

    choices = range(microbatches + 1)
    if (microbatches + 1) ** (P - 1) <= 20_000:   # every combination (pp <= 5 at 8 microbatches)
        counts = min(([0, *c] for c in itertools.product(choices, repeat=P - 1)),
                     key=lambda c: (busiest(c), sum(c), c))
    else:   # coordinate descent: each boundary's best count given the others, until none changes
        counts = [0] * P
        for _ in range(2 * P):
            before = list(counts)
            for p in range(1, P):
                counts[p] = min(choices, key=lambda k: (busiest(counts[:p] + [k] + counts[p + 1:]), k))
            if counts == before:
                break
    return tuple(spread(k, microbatches) for k in counts)


def pipeline_offloads(cell: str, layers: int, embed: int, hidden: int, sp: int, pp: int, tp: int,
                      microbatches: int) -> tuple:
    """A bidirectional stack's `offloaded` (`offload_reverse` over its stages, the first layer
    reading `embed` inputs and the others 2 x hidden): () where nothing moves, which is always at
    sp > 1, tp > 1, for the linear cells, and without the widths. What the plan, the performance
    model and the schedule's drawing all use."""
    if cell in LINEAR_CELLS or sp > 1 or tp > 1 or pp < 2 or not (embed and hidden):
        return ()
    stages = [range(*layers_of(layers, pp, p)) for p in range(pp)]
    offloaded = offload_reverse([embed] + [2 * hidden] * (layers - 1), hidden, stages, microbatches)
    return offloaded if any(offloaded) else ()


def spread(count: int, microbatches: int) -> tuple[int, ...]:
    """`count` of the microbatches, evenly spaced and ending with the last (4 of 8: 1, 3, 5, 7)."""
    return tuple(math.floor((i + 1) * microbatches / count + 0.5) - 1 for i in range(count))


def mode_of(cell: str, sp: int) -> str:
    return "scan" if cell in LINEAR_CELLS and sp > 1 else "chain"


def resolve_microbatches(requested: int, rows: int, sp: int, pp: int = 1, mode: str = "chain") -> int:
    """Microbatches per step for this grid; refuse a batch too small for what was asked.

    Microbatches are what overlaps the sp chain (segment s runs microbatch m while s+1 runs
    m-1) and the pipeline stages of the scan mode; chunks overlap the pp chain (see
    resolve_chunks), so with sp = 1 the automatic choice is one microbatch.
    """
    if requested > MAX_UNITS:
        raise ConfigError(f"parallel.microbatches = {requested}: at most {MAX_UNITS} are supported")
    if requested > rows:
        raise ConfigError(
            f"parallel.microbatches = {requested} but each data-parallel group has only {rows} row(s) per step; "
            f"use at most {rows} microbatches or a larger data.batch_size")
    if requested:
        return requested
    overlaps = (mode == "chain" and sp > 1) or (mode == "scan" and pp > 1)
    if not overlaps:
        return 1
    if rows < 2:
        # One row cannot be split: one microbatch. Still worth running: stages overlap through time
        # chunks, and along the sequence chain segment s+1 starts a layer behind segment s.
        return 1
    return max(2, min(MAX_AUTO_MICROBATCHES, rows // MIN_AUTO_ROWS))


def resolve_chunks(requested: int, shortest_segment: int, pp: int, microbatches: int, mode: str) -> int:
    """Time chunks per segment: what lets pipeline stages overlap even with one microbatch."""
    if mode == "scan":
        if requested > 1:
            raise ConfigError(
                f"parallel.chunks = {requested}: linear cells with parallel.sp > 1 run each segment as one "
                f"cross-rank scan, which is not cut into chunks; set parallel.chunks = 0 and use "
                f"parallel.microbatches to overlap pipeline stages")
        return 1
    if requested > shortest_segment:
        raise ConfigError(
            f"parallel.chunks = {requested} but the shortest time segment has {shortest_segment} step(s) "
            f"(data.seq_len split over parallel.sp): use at most {shortest_segment} chunks")
    if requested:
        chunks = requested
    elif pp == 1:
        chunks = 1
    else:
        wanted = math.ceil(CHUNKS_PER_STAGE * (pp - 1) / microbatches)
        chunks = max(1, min(wanted, shortest_segment // MIN_AUTO_CHUNK_STEPS))
    if microbatches * chunks > MAX_UNITS:
        raise ConfigError(
            f"parallel.microbatches x parallel.chunks = {microbatches} x {chunks} units per step: at most "
            f"{MAX_UNITS} are supported (MPI message tags)")
    return chunks


def check_state_tags(microbatches: int, stage_layers: int, sp: int, mode: str) -> None:
    """The sequence chain sends one state per layer and microbatch; their tags must stay valid MPI tags."""
    if mode == "chain" and sp > 1 and microbatches * stage_layers > MAX_UNITS:
        raise ConfigError(
            f"parallel.microbatches x layers per pipeline stage = {microbatches} x {stage_layers} boundary states "
            f"per step: at most {MAX_UNITS} are supported (MPI message tags); use fewer microbatches")


def bubble(sp: int, pp: int, microbatches: int, chunks: int, mode: str = "chain", layers: int = 1) -> float:
    """Idle fraction of a step when every layer of every unit costs the same (the schedule's bubble).

    chain: segment s+1 starts a microbatch once segment s has run its first C-1 chunks and the
    first of the stage's `layers` on its last chunk (the executor runs layers one at a time where
    states pass between segments), and stage p+1 one unit after stage p, so a step is
    M*C + (S-1)*(C-1+1/layers) + (P-1) unit times.
    scan: segments run together; only stages are chained, one microbatch apart.
    """
    if mode == "scan":
        units, lag = microbatches, pp - 1
    else:
        units, lag = microbatches * chunks, (sp - 1) * (chunks - 1 + 1 / layers) + (pp - 1)
    return lag / (units + lag)


def check_bidirectional(grid: Grid, chunks: int, microbatches: int = 0, stage_layers: int = 1) -> None:
    """What bidirectional layers cannot run exactly, refused before any compute
    (docs/parallelism.md, "Bidirectional layers")."""
    if chunks > 1:
        raise ConfigError(
            f"parallel.chunks = {chunks} with model.bidirectional = true: a bidirectional stage hands a chunk on only "
            f"once both directions covered it, which is the whole sequence; use parallel.chunks = 0 (one chunk) and "
            f"parallel.microbatches to overlap pipeline stages")
    if grid.sp > 1 and 2 * microbatches * stage_layers > MAX_UNITS:
        raise ConfigError(
            f"parallel.microbatches x layers per pipeline stage = {microbatches} x {stage_layers} with "
            f"model.bidirectional = true: at most {MAX_UNITS // 2} boundary states per direction and step are "
            f"supported under parallel.sp > 1 (MPI message tags); use fewer microbatches")


def nearest_divisible(value: int, divisor: int) -> list[int]:
    """The multiples of divisor nearest to value (below and above)."""
    below = value // divisor * divisor
    return [v for v in (below, below + divisor) if v > 0]


def check_grid_fits(grid: Grid, layers: int, seq_len: int, hidden: int | None = None) -> None:
    """Refusals that need only the grid and the model/data sizes (before any data is read)."""
    if hidden is not None and hidden % grid.tp:
        sizes = " or ".join(str(v) for v in nearest_divisible(hidden, grid.tp))
        divisors = [d for d in range(2, min(hidden, 64) + 1) if hidden % d == 0][:6]
        raise ConfigError(
            f"model.hidden = {hidden} is not divisible by parallel.tp = {grid.tp}: every rank of a tensor-parallel "
            f"group owns the same number of hidden units; use model.hidden = {sizes}"
            + (f", or parallel.tp = {', '.join(map(str, divisors))}" if divisors else ""))
    if grid.pp > layers:
        raise ConfigError(
            f"parallel.pp = {grid.pp} but model.layers = {layers}: every pipeline stage needs at least one "
            f"layer; use parallel.pp <= {layers} (or more layers)")
    if seq_len < grid.sp:
        raise ConfigError(f"data.seq_len = {seq_len} is shorter than the {grid.sp} sequence-parallel segments: "
                          f"use data.seq_len >= parallel.sp")


@dataclass(frozen=True)
class Plan:
    """Everything one rank needs to know about its share of a step."""

    grid: Grid
    coords: dict
    rows: tuple[int, int]       # global-batch rows [start, stop)
    segment: tuple[int, int]    # time steps [start, stop) of every sequence
    layers: tuple[int, int]     # stack layers [start, stop) of this stage
    hidden: tuple[int, int]     # hidden units [start, stop) of every layer (a tp slice)
    microbatches: int
    chunks: int
    mode: str                   # "chain" or "scan"
    # Bidirectional pipelines: per stage, the microbatches whose reverse direction of that stage's
    # first layer the stage below runs (`offload_reverse`); empty everywhere otherwise.
    offloaded: tuple = ()

    @property
    def first_stage(self) -> bool:
        """Owns the input embedding/projection and reads the inputs."""
        return self.coords["pp"] == 0

    @property
    def last_stage(self) -> bool:
        """Owns the head and the loss and reads the targets."""
        return self.coords["pp"] == self.grid.pp - 1

    @property
    def reads(self) -> Reads:
        """What this rank reads of every batch (the loaders take this, mpirnn/data/loader.py)."""
        return Reads(self.rows, self.segment, inputs=self.first_stage, targets=self.last_stage)

    @property
    def first_segment(self) -> bool:
        return self.coords["sp"] == 0

    @property
    def last_segment(self) -> bool:
        return self.coords["sp"] == self.grid.sp - 1

    @property
    def local_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def local_steps(self) -> int:
        return self.segment[1] - self.segment[0]

    def for_length(self, length: int) -> "Plan":
        """This plan for a step whose rows all end by step `length` (labelled rows of different
        lengths): the segments split those steps instead of the whole padded sequence, so every
        sequence-parallel rank gets a share of a batch of short rows (the rest is padding, which
        changes no result). Every rank computes the same from the same global batch."""
        steps = max(length, self.grid.sp)   # every segment keeps at least one step
        shortest = steps // self.grid.sp
        return replace(self, segment=segment_of(steps, self.grid, self.coords["sp"]),
                       chunks=min(self.chunks, shortest))

    def with_microbatches(self, microbatches: int, chunks: int) -> "Plan":
        """This plan with another microbatch count (an evaluation batch too short for the run's):
        offloaded reverse directions of microbatches it no longer has are dropped (any subset
        runs exactly, and every stage of a pipeline drops the same ones)."""
        kept = tuple(tuple(m for m in lent if m < microbatches) for lent in self.offloaded)
        return replace(self, microbatches=microbatches, chunks=chunks, offloaded=kept if any(kept) else ())

    def microbatch_rows(self) -> list[slice]:
        """Each microbatch's rows, relative to this rank's rows."""
        return [slice(*chunk(self.local_rows, self.microbatches, m)) for m in range(self.microbatches)]

    def chunk_steps(self) -> list[slice]:
        """Each chunk's time steps, relative to this rank's segment."""
        return [slice(*chunk(self.local_steps, self.chunks, c)) for c in range(self.chunks)]


def make_grid(cfg, world_size: int) -> Grid:
    """The run's grid from the config's parallel section, refused when the model cannot be cut along it."""
    p = cfg.parallel
    grid = Grid(world_size, p.dp, p.sp, p.pp, p.tp)
    check_grid_fits(grid, cfg.model.layers, cfg.data.seq_len, cfg.model.hidden)
    return grid


def make_plan(grid: Grid, coords: dict, *, batch_size: int, seq_len: int, layers: int, cell: str,
              microbatches: int = 0, chunks: int = 0, hidden: int | None = None,
              bidirectional: bool = False, embed: int = 0) -> Plan:
    """This rank's plan; raises ConfigError (with what to change) when the grid cannot be run exactly.

    `embed`: the first layer's input width; with it (and `hidden`), a bidirectional pipeline of
    rnn / lstm / gru layers at sp = tp = 1 balances its stages (`offload_reverse`).

    Every rank of a run computes every rank's choices from the same numbers, so refusals are
    the same everywhere (microbatches depend on the smallest data-parallel group).
    """
    check_grid_fits(grid, layers, seq_len, hidden)
    if bidirectional:
        check_bidirectional(grid, chunks)
    mode = mode_of(cell, grid.sp)
    # Bidirectional stages run whole segments, one chunk each, as the scan mode does: microbatches
    # overlap their stages, and the middle segments' wait for the two chains where sp > 2 (at sp = 2
    # the chains swap halves with no idle tick: docs/parallelism.md, "Bidirectional layers").
    overlap = mode if bidirectional and grid.sp > 2 else "scan" if bidirectional else mode
    fewest_rows = batch_size // grid.dp
    resolve_microbatches(microbatches, fewest_rows, grid.sp, grid.pp, overlap)  # refuse the same everywhere
    rows = rows_of(batch_size, grid, coords["dp"])
    m = resolve_microbatches(microbatches, rows[1] - rows[0], grid.sp, grid.pp, overlap)
    shortest_segment = seq_len // grid.sp
    c = resolve_chunks(chunks, shortest_segment, grid.pp, m, "scan" if bidirectional else overlap)
    # With the most rows and layers any rank has, so that every rank refuses alike.
    most = resolve_microbatches(microbatches, -(-batch_size // grid.dp), grid.sp, grid.pp, overlap)
    check_state_tags(most, -(-layers // grid.pp), grid.sp, mode)
    if bidirectional:
        check_bidirectional(grid, c, most, -(-layers // grid.pp))
    width = (hidden or 0) // grid.tp
    offloaded = pipeline_offloads(cell, layers, embed, hidden or 0, grid.sp, grid.pp, grid.tp, m) \
        if bidirectional else ()
    return Plan(grid, dict(coords), rows, segment_of(seq_len, grid, coords["sp"]),
                layers_of(layers, grid.pp, coords["pp"]), (coords["tp"] * width, (coords["tp"] + 1) * width),
                m, c, mode, offloaded)
