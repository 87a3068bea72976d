"""The planner's ranking: the fastest grid for N ranks, and the fastest microbatch and chunk counts for a grid.

    python -m mpirnn.plan --ranks 4           # prints the ranking (mpirnn/tools/planner.py)
    python -m pytest -q tests/test_perf_model.py tests/test_modelled_counts.py

Training calls `best_microbatches` for `parallel.microbatches = 0` (mpirnn/training/layout.py),
so this is part of the engine, not of the tools. Plain arithmetic on the step model
(mpirnn/perf/step_model.py): no torch, no MPI. Each grid gets the microbatch count M (and, with
pp, the chunk count C) the model predicts fastest: more microbatches shrink the bubble, but
thinner ones run less efficiently per row and every one pays a fixed cost per call.
"""

from __future__ import annotations

import math

from mpirnn.perf.calibration import Calibration
from mpirnn.perf.step_model import AXES, Layout, Prediction, Shape, invalid, predict

MAX_MICROBATCHES = 64
MAX_CHUNKS = 16


def factorizations(n: int, axes: int = 4) -> list[tuple[int, ...]]:
    """Every ordered tuple of `axes` positive integers whose product is n."""
    if axes == 1:
        return [(n,)]
    return [(d, *rest) for d in range(1, n + 1) if n % d == 0 for rest in factorizations(n // d, axes - 1)]


def valid_grids(shape: Shape, ranks: int) -> list[dict]:
    """Grids of `ranks` ranks this shape can use: pp ≤ layers, tp dividing hidden, sp ≤ seq_len, dp ≤ batch."""
    return [dict(zip(AXES, g)) for g in factorizations(ranks)
            if invalid(shape, Layout(*g)) is None]


def _powers_up_to(limit: int) -> list[int]:
    values, v = [], 1
    while v <= limit:
        values.append(v)
        v *= 2
    return values + ([limit] if limit not in values else [])


def candidates(shape: Shape, grid: dict) -> list[tuple[int, int]]:
    """(M, C) pairs worth predicting: powers of two (and the row count itself); chunks only for pp with nonlinear cells."""
    rows = math.ceil(shape.batch / grid["dp"])
    segment = math.ceil(shape.seq_len / grid["sp"])
    chained = grid["sp"] > 1 and not shape.linear
    Ms = _powers_up_to(min(rows, MAX_MICROBATCHES)) if chained or grid["pp"] > 1 else [1]
    # Linear cells and bidirectional layers run one chunk per segment (mpirnn/parallel/plan.py).
    Cs = _powers_up_to(min(segment, MAX_CHUNKS)) if grid["pp"] > 1 and not (shape.linear or shape.bidirectional) \
        else [1]
    return [(m, c) for m in Ms for c in Cs]


def best_microbatches(shape: Shape, grid: dict, cal: Calibration, nodes: int = 1, bucket_mb: float = 4.0,
                      microbatches: int = 0, chunks: int = 0) -> Prediction:
    """The prediction for `grid` with the (M, C) the model finds fastest; M or C fixed when given (> 0).

    This is what a trainer calls for parallel.microbatches = 0: `best_microbatches(...).layout.microbatches`.
    """
    best = None
    for m, c in candidates(shape, grid):
        m, c = microbatches or m, chunks or c
        layout = Layout(**grid, microbatches=m, chunks=c, nodes=nodes)
        if invalid(shape, layout):
            continue
        guess = predict(shape, layout, cal, bucket_mb)
        if best is None or guess.step_s < best.step_s:
            best = guess
    if best is None:
        raise ValueError(f"no valid microbatch count for grid {grid} (microbatches={microbatches}, chunks={chunks})")
    return best


def rank_grids(shape: Shape, ranks: int, cal: Calibration, nodes: int = 1, bucket_mb: float = 4.0) -> list[Prediction]:
    """Every valid grid for `ranks`, fastest first."""
    found = []
    for grid in valid_grids(shape, ranks):
        if ranks % nodes == 0:
            found.append(best_microbatches(shape, grid, cal, nodes, bucket_mb))
    return sorted(found, key=lambda p: p.step_s)


def serial(shape: Shape, cal: Calibration, bucket_mb: float = 4.0) -> Prediction:
    return predict(shape, Layout(), cal, bucket_mb)
