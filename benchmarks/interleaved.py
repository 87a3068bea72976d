"""Timing helper for the one-process scripts here: medians of interleaved rounds.

Each round times every candidate once (the median of `repeats` calls after a warm-up call),
so a burst of load from elsewhere on a shared machine spoils one round of each, not all of one.
"""

import statistics
import time


def median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_medians(parts: dict, rounds: int = 3, repeats: int = 15) -> dict:
    """{name: median over rounds of each round's median seconds} for {name: callable}."""
    found = {name: [] for name in parts}
    for _ in range(rounds):
        for name, fn in parts.items():
            found[name].append(median_s(fn, repeats))
    return {name: statistics.median(values) for name, values in found.items()}
