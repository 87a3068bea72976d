"""The predicted time of one training step for a model shape, a layout and a calibration.

    python -m mpirnn.plan --config inputs/lstm-sp.toml --ranks 4 --grid dp=2,sp=2
    python -m pytest -q tests/test_perf_model.py

A step is: the wavefront of units over this rank's stage (mpirnn/perf/schedule.py),
each unit running its layers over one chunk of one microbatch plus, on the first stage, the
embedding and, on the last, the head and loss; the messages of the sequence (sp), pipeline
(pp) and tensor (tp) axes; the gradient allreduce over the ranks holding the same
parameters (dp × sp), overlapped with backward except its last bucket; and Adam. Compute
runs slower when the node's other ranks are busy too (the calibration's slowdown).
Rank layout follows mpirnn.grid: tp varies fastest, then pp, sp, dp, so an
axis's messages cross nodes only when its ranks are spread over more than one node.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mpirnn.parallel.plan import pipeline_offloads
from mpirnn.perf import links
from mpirnn.perf.bidirectional_chain import replay
from mpirnn.perf.calibration import GATES, PROJECTIONS, STATE_PARTS, Calibration
from mpirnn.perf.schedule import bubble_fraction, chain_time

AXES = ("dp", "sp", "pp", "tp")


@dataclass(frozen=True)
class Shape:
    """What is trained: the model and the global batch of one step."""

    cell: str
    layers: int
    hidden: int
    embed: int
    batch: int
    seq_len: int
    vocab: int | None = 256   # None: a continuous series of `features` values per step
    features: int = 1
    dtype_bytes: int = 4
    bidirectional: bool = False   # every layer a forward and a reverse direction, outputs [forward; reverse]

    @property
    def linear(self) -> bool:
        return self.cell in PROJECTIONS

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def width(self) -> int:
        """A layer's output width: what the next layer, the next stage and the head read."""
        return self.directions * self.hidden

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    @classmethod
    def from_config(cls, cfg, vocab: int | None = 256) -> "Shape":
        m, d = cfg.model, cfg.data
        return cls(m.cell, m.layers, m.hidden, m.embed, d.batch_size, d.seq_len, vocab or None,
                   dtype_bytes=8 if m.dtype == "float64" else 4, bidirectional=getattr(m, "bidirectional", False))


@dataclass(frozen=True)
class Layout:
    """Where it runs: the grid, microbatches M and chunks C of the wavefront, and the nodes."""

    dp: int = 1
    sp: int = 1
    pp: int = 1
    tp: int = 1
    microbatches: int = 1
    chunks: int = 1
    nodes: int = 1
    threads: int = 1
    # glibc's allocator in the ranks: "keep" (training and evaluation on CPUs keep freed memory,
    # mpirnn/distributed/device.py `keep_freed_memory`, as the bench's and the calibration's MALLOC
    # settings do, mpirnn/perf/processes.py); "default" (a process that leaves glibc as it is, or
    # a user's own MALLOC_* settings) faults a long call's activations in again on every call
    malloc: str = "keep"

    @property
    def ranks(self) -> int:
        return self.dp * self.sp * self.pp * self.tp

    @property
    def ranks_per_node(self) -> int:
        return math.ceil(self.ranks / self.nodes)

    @property
    def grid(self) -> dict:
        return {axis: getattr(self, axis) for axis in AXES}


@dataclass
class Prediction:
    layout: Layout
    step_s: float
    tokens_per_s: float
    bubble: float                 # idle share of the wavefront's critical path
    parts: dict = field(default_factory=dict)   # seconds: wavefront, exchange fill, gradients, optimizer, ...

    def to_dict(self) -> dict:
        return {"grid": self.layout.grid, "microbatches": self.layout.microbatches, "chunks": self.layout.chunks,
                "nodes": self.layout.nodes, "step_time_s": self.step_s, "tokens_per_s": self.tokens_per_s,
                "bubble": self.bubble, "parts_s": self.parts}


def split(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` of n items in `parts` contiguous parts, the first n % parts one larger."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def invalid(shape: Shape, layout: Layout) -> str | None:
    """Why this layout cannot run this shape, or None."""
    rows, segment = math.ceil(shape.batch / layout.dp), math.ceil(shape.seq_len / layout.sp)
    checks = [(layout.dp <= shape.batch, f"dp={layout.dp} > batch {shape.batch}"),
              (layout.sp <= shape.seq_len, f"sp={layout.sp} > seq_len {shape.seq_len}"),
              (layout.pp <= shape.layers, f"pp={layout.pp} > layers {shape.layers}"),
              (shape.hidden % layout.tp == 0, f"tp={layout.tp} does not divide hidden {shape.hidden}"),
              (layout.microbatches <= rows, f"{layout.microbatches} microbatches > {rows} rows per dp rank"),
              (layout.chunks <= segment, f"{layout.chunks} chunks > {segment} time steps per segment"),
              (layout.chunks == 1 or not shape.linear, "linear cells run whole segments (chunks = 1)"),
              (layout.chunks == 1 or not shape.bidirectional,
               "bidirectional layers run one chunk per segment (a chunk is handed on once both directions covered it)"),
              (layout.ranks % layout.nodes == 0, f"{layout.ranks} ranks do not fill {layout.nodes} nodes evenly")]
    return next((why for ok, why in checks if not ok), None)


# ------------------------------------------------------------------ parameters


def stage_tensors(shape: Shape, layout: Layout, stage: int) -> list[int]:
    """Element counts of this stage's parameter tensors on one rank, in registration order."""
    H, tp = shape.hidden, layout.tp
    first, stop = split(shape.layers, layout.pp, stage)
    sizes = []
    if stage == 0:
        sizes += [shape.vocab * shape.embed] if shape.vocab else [shape.features * shape.embed, shape.embed]
    for index in range(first, stop):
        d_in = shape.embed if index == 0 else shape.width
        for _ in range(shape.directions):   # a bidirectional layer: the same tensors again for the reverse direction
            if shape.linear:
                k = PROJECTIONS[shape.cell] * H // tp
                sizes += [k * d_in, k]
            else:
                g = GATES[shape.cell] * H // tp   # a tp rank holds its hidden units' rows of every weight
                sizes += [g * d_in, g * H, g, g]
    if stage == layout.pp - 1:
        out = shape.vocab or shape.features
        sizes += [shape.width * out, out]   # embedding and head are replicated over tp
    return sizes


def bucket_bytes(tensors: list[int], itemsize: int, bucket_mb: float) -> list[float]:
    """Gradient buckets as mpirnn.parallel.gradients forms them: reverse order, closed at >= bucket_mb MiB."""
    limit, buckets, size = bucket_mb * 2**20, [], 0
    for n in reversed(tensors):
        size += n * itemsize
        if size >= limit:
            buckets.append(size)
            size = 0
    return buckets + ([size] if size else [])


# ------------------------------------------------------------------ links per axis


def _strides(layout: Layout) -> dict:
    return {"tp": 1, "pp": layout.tp, "sp": layout.tp * layout.pp, "dp": layout.tp * layout.pp * layout.sp}


def crossing_hops(stride: int, size: int, per_node: int) -> int:
    """Hops between neighbours k, k+1 of a chain of `size` ranks `stride` apart that cross a node boundary."""
    return sum((k * stride) // per_node != ((k + 1) * stride) // per_node for k in range(size - 1))


def axis_link(cal: Calibration, layout: Layout, axis: str) -> links.Link:
    """The link an axis's collectives are bound by: inter-node as soon as its ranks span nodes."""
    spans = _strides(layout)[axis] * getattr(layout, axis) > layout.ranks_per_node
    return cal.link(inter_node=spans)


def chain_hop_s(cal: Calibration, layout: Layout, axis: str, nbytes: float) -> float:
    """One message along every hop of an axis's chain, summed (the fill's latency)."""
    size = getattr(layout, axis)
    inter = crossing_hops(_strides(layout)[axis], size, layout.ranks_per_node)
    return inter * links.p2p(cal.link(True), nbytes) + (size - 1 - inter) * links.p2p(cal.link(False), nbytes)


# ------------------------------------------------------------------ the step


def unit_size(shape: Shape, layout: Layout) -> tuple[int, int]:
    """(rows, time steps) of one unit: the largest microbatch of a dp rank's rows, the longest chunk."""
    rows = math.ceil(math.ceil(shape.batch / layout.dp) / layout.microbatches)
    steps = math.ceil(math.ceil(shape.seq_len / layout.sp) / layout.chunks)
    return rows, steps


def unit_s(shape: Shape, layout: Layout, cal: Calibration, stage: int, slowdown: float) -> float:
    """One unit's forward+backward on `stage`: compute (slowed by busy neighbours) plus the messages it sends."""
    H, K, b = shape.hidden, layout.tp, shape.dtype_bytes
    rows, steps = unit_size(shape, layout)
    first, stop = split(shape.layers, layout.pp, stage)
    compute, messages = cal.unit_overhead_s, 0.0
    tp_link, sp_link = axis_link(cal, layout, "tp"), axis_link(cal, layout, "sp")
    scan = shape.linear and layout.sp > 1   # a segment of the cross-rank scan
    D = shape.directions   # tp splits each direction's hidden units: every per-direction cost twice
    for index in range(first, stop):
        d_in = shape.embed if index == 0 else shape.width
        if K == 1:
            compute += cal.layer_s(shape.cell, rows, steps, d_in, H, scan, directions=D, faults=layout.malloc == "default")
        elif shape.linear:   # elementwise in time: 1/K of the work, exchanges at the layer's boundaries only
            compute += cal.layer_s(shape.cell, rows, steps, d_in, H, scan, directions=D) / K
            messages += D * links.allgather(tp_link, rows * steps * H * b / K, K)   # outputs gathered forward
        else:   # a cell stepped in a loop on 1/K of the hidden units
            compute += D * steps * cal.tp_step_s(shape.cell, rows, d_in, H, K)
            # every time step gathers the hidden shards forward and reduce-scatters their gradient backward
            messages += D * steps * (links.allgather(tp_link, rows * H * b / K, K)
                                     + links.reduce_scatter(tp_link, rows * H * b, K) + 2 * cal.lockstep_sync_s)
        if K > 1:   # the input's gradient is summed over the group (each rank's products give part of it)
            messages += links.allreduce(tp_link, rows * steps * d_in * b, K)
        if layout.sp > 1 and shape.linear:   # the cross-rank scan: Allgather of summaries, Allreduce of their gradients
            summary = 3 * rows * H // K * b
            messages += D * (links.allgather(sp_link, summary, layout.sp)
                             + links.allreduce(sp_link, layout.sp * summary, layout.sp))
    if stage == 0:
        compute += cal.input_s(rows * steps, shape.embed, shape.vocab)
    if stage == layout.pp - 1:
        compute += cal.head_s(rows * steps, shape.width, shape.vocab)
    if layout.sp > 1 and not shape.linear:   # each layer's boundary state once per microbatch each way, i.e. per C units
        state = STATE_PARTS.get(shape.cell, 1) * rows * H // K * b
        messages += 2 * D * (stop - first) * links.p2p(sp_link, state) / layout.chunks
    if layout.pp > 1:                        # the chunk's activations forward, their gradient back
        messages += 2 * links.p2p(axis_link(cal, layout, "pp"), rows * steps * shape.width // K * b)
    return compute * slowdown + messages


def segment_hop_share(shape: Shape, layout: Layout, cal: Calibration) -> float:
    """The share of a unit the next segment waits for (mpirnn/perf/schedule.py): the stage's
    first layer in forward and its last in backward, taken as half of each one's forward+backward.
    The largest over stages."""
    if layout.sp == 1 or shape.linear:
        return 1.0
    rows, steps = unit_size(shape, layout)
    hops = []
    for p in range(layout.pp):
        first, stop = split(shape.layers, layout.pp, p)
        times = [cal.layer_s(shape.cell, rows, steps, shape.embed if i == 0 else shape.width, shape.hidden)
                 for i in range(first, stop)]
        total = sum(times)
        hops.append((times[0] + times[-1]) / 2 / total if total > 0 else 1 / len(times))
    return max(hops)


def predict(shape: Shape, layout: Layout, cal: Calibration, bucket_mb: float = 4.0) -> Prediction:
    """Step time of `layout` on `shape`; raises ValueError for a layout that cannot run it."""
    why = invalid(shape, layout)
    if why:
        raise ValueError(why)
    M, C, S, P = layout.microbatches, layout.chunks, layout.sp, layout.pp
    slowdown = cal.slowdown(min(layout.ranks, layout.ranks_per_node) * layout.threads)
    units = [unit_s(shape, layout, cal, p, slowdown) for p in range(P)]
    hop = segment_hop_share(shape, layout, cal)
    wavefront = chain_time(units, M, C, S, shape.linear, hop)
    bubble = bubble_fraction(M, C, S, P, shape.linear, hop)
    two_chains = shape.bidirectional and (S > 1 or bool(offloaded_of(shape, layout))) and not shape.linear
    if two_chains:   # two opposite wavefronts, or offloaded reverse directions, replayed task by task
        # (mpirnn/perf/bidirectional_chain.py)
        wavefront, bubble = bidirectional_wavefront(shape, layout, cal, units)

    # The fill also waits for each hop's first message (forward) and its gradient (backward).
    rows, steps = unit_size(shape, layout)
    fill = 0.0
    if S > 1 and not shape.linear and not two_chains:   # the first layer's state forward, the last one's gradient back
        state = STATE_PARTS.get(shape.cell, 1) * rows * shape.hidden // layout.tp * shape.dtype_bytes
        fill += 2 * chain_hop_s(cal, layout, "sp", state)
    if P > 1:
        fill += 2 * chain_hop_s(cal, layout, "pp", rows * steps * shape.hidden // layout.tp * shape.dtype_bytes)

    # Every stage reduces and steps its own parameters at once: the slowest stage decides.
    replicas = layout.dp * layout.sp
    spans = layout.tp * layout.pp * replicas > layout.ranks_per_node
    link = cal.link(inter_node=spans)
    gradients = optimizer = accumulate = 0.0
    for p in range(P):
        tensors = stage_tensors(shape, layout, p)
        buckets = [links.allreduce(link, n, replicas) for n in bucket_bytes(tensors, shape.dtype_bytes, bucket_mb)]
        exposed = buckets[-1] + (1 - cal.async_progress) * sum(buckets[:-1]) if buckets else 0.0
        if replicas > 1:   # gradients are flattened into the bucket buffers and the sums copied back
            exposed += slowdown * cal.accumulate_s(sum(tensors), 3)
        gradients = max(gradients, exposed)
        passes = M if shape.linear else M * C
        optimizer = max(optimizer, slowdown * cal.optimizer_s(sum(tensors), len(tensors)))
        accumulate = max(accumulate, slowdown * cal.accumulate_s(sum(tensors), passes))
    step = wavefront + fill + gradients + optimizer + accumulate
    parts = {"wavefront": wavefront, "exchange_fill": fill, "gradient_allreduce": gradients,
             "optimizer": optimizer, "accumulate": accumulate, "unit_s": units, "slowdown": slowdown}
    return Prediction(layout, step, shape.tokens / step, bubble, parts)


def offloaded_of(shape: Shape, layout: Layout) -> tuple:
    """The reverse directions the plan offloads to the stage below (mpirnn/parallel/plan.py)."""
    if not shape.bidirectional:
        return ()
    return pipeline_offloads(shape.cell, shape.layers, shape.embed, shape.hidden, layout.sp, layout.pp, layout.tp,
                             layout.microbatches)


def bidirectional_wavefront(shape: Shape, layout: Layout, cal: Calibration, units: list[float]) -> tuple[float, float]:
    """(seconds, bubble) of the two opposite wavefronts under sp (rnn / lstm / gru).

    A task (one direction of one layer over one microbatch) costs its share of its stage's unit:
    the unit's time (compute, slowed by busy neighbours, and the messages it sends) split over
    the stage's layers in proportion to their calibrated times, half to each direction, so the
    embedding and the head ride on the stage's tasks. The replay adds each state's and each
    microbatch's message along the chains (mpirnn/perf/bidirectional_chain.py)."""
    rows, steps = unit_size(shape, layout)
    stages = [range(*split(shape.layers, layout.pp, p)) for p in range(layout.pp)]
    layer_s = {l: cal.layer_s(shape.cell, rows, steps, shape.embed if l == 0 else shape.width, shape.hidden)
               for l in range(shape.layers)}
    share = {l: layer_s[l] / sum(layer_s[i] for i in stages[p]) for p in range(layout.pp) for l in stages[p]}
    state = STATE_PARTS.get(shape.cell, 1) * rows * shape.hidden // layout.tp * shape.dtype_bytes
    # a message's time each way: the state forward and its gradient back (the same for the activations)
    state_hop = 2 * links.p2p(axis_link(cal, layout, "sp"), state)
    activation = rows * steps * shape.width // layout.tp * shape.dtype_bytes
    activation_hop = 2 * links.p2p(axis_link(cal, layout, "pp"), activation) if layout.pp > 1 else 0.0
    step, busiest = replay(layout.sp, stages, layout.microbatches,
                           lambda stage, task: units[stage] * share[task.layer] / 2, state_hop, activation_hop,
                           offloaded_of(shape, layout))
    return step, 1 - busiest / step


def shape_dict(shape: Shape) -> dict:
    return asdict(shape)
