"""The critical path of the pp × sp wavefront, in units of work.

    python -m pytest -q tests/test_perf_model.py -k bubble

A rank owns segment s of S (sp) and stage p of P (pp). Its rows are cut into M
microbatches and, for the pipeline, its segment into C chunks; a *unit* (m, c) runs the
stage's layers over chunk c of microbatch m, forward and backward. For nonlinear cells
(rnn, lstm, gru) unit (m, c) on (s, p) needs the final state of (m, C-1) from segment s-1
and the chunk's input activations from stage p-1, so stage p starts one unit after stage
p-1. The executor runs a unit's layers one at a time and sends each layer's final state as
soon as it is done, so segment s starts C − 1 + h units after segment s-1, where the *hop*
h is the share of a unit the next segment must wait for: its first layer in forward, its
last in backward (1/L of the unit for L equal layers, 1 for one layer). With a uniform unit
time u the step takes u·(M·C + (S−1)·(C − 1 + h) + (P−1)). Linear cells (mingru, minlstm)
have no chain over segments (the cross-rank scan exchanges summaries instead) and run whole
segments (C = 1): u·(M + P − 1).
"""

from __future__ import annotations


def critical_units(M: int, C: int, S: int, P: int, linear: bool = False, hop: float = 1.0) -> float:
    """Unit slots from the first unit's start to the last one's end, uniform units."""
    if linear:
        return M + P - 1
    return M * C + (S - 1) * (C - 1 + hop) + (P - 1)


def busy_units(M: int, C: int, linear: bool = False) -> int:
    """Units each rank actually runs."""
    return M if linear else M * C


def bubble_fraction(M: int, C: int, S: int, P: int, linear: bool = False, hop: float = 1.0) -> float:
    """Share of the critical path a rank spends idle: ((S−1)·(C−1+h) + (P−1)) / (M·C + (S−1)·(C−1+h) + (P−1))."""
    total = critical_units(M, C, S, P, linear, hop)
    return (total - busy_units(M, C, linear)) / total


def chain_time(unit_s: list[float], M: int, C: int, S: int, linear: bool = False, hop: float = 1.0) -> float:
    """Step time with uneven stages: the slowest stage sets the steady state, the sum of all fills the pipe.

    unit_s[p] is stage p's unit time. With equal units this is exactly u · critical_units.
    """
    P = len(unit_s)
    slowest = max(unit_s)
    steady = critical_units(M, C, S, P, linear, hop) - (P - 1) - 1   # unit slots beyond the first pass through all stages
    return slowest * steady + sum(unit_s)
