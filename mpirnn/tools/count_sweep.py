"""`python -m mpirnn.bench --sweep-counts`: is the performance model's choice of microbatches (M)
and chunks (C) as fast as the best fixed count?

Adds, beside the bench's own rows, every fixed count of one axis on W1 (sp=2: M; pp=2: C), W2
(sp=2: M) and W5 (pp=2: C), and the model's choice (what `parallel.calibration = auto` runs);
then says how far the model's choice is from the fastest fixed count, measured in the same run
(target: within 5%).
"""

from __future__ import annotations

import re

TARGET = 0.05

# (workload, grid, the count swept, its fixed values); the bench's own rows already hold some.
SWEEPS = (
    ("W1", {"sp": 2}, "microbatches", (2, 4, 8, 16)),
    ("W1", {"pp": 2}, "chunks", (2, 4, 8, 16)),
    ("W2", {"sp": 2}, "microbatches", (1, 2, 4, 8)),
    ("W5", {"pp": 2}, "chunks", (2, 4, 8, 16)),
)
LETTER = {"microbatches": "M", "chunks": "C"}


def _grid_name(grid: dict) -> str:
    return ", ".join(f"{axis}={degree}" for axis, degree in grid.items())


def sweep_name(grid: dict, key: str, value) -> str:
    """The bench's own row names: "sp=2, M=8", "pp=2, C=8", "sp=2, M by the model"."""
    return f"{_grid_name(grid)}, {LETTER[key]}" + (" by the model" if value == "model" else f"={value}")


def add_sweeps(add, existing: list[dict], only: list[str], tiny: bool) -> None:
    """Rows for every count the shape allows and not already planned, and the model's choice."""
    from mpirnn.tools.shapes import shape_of
    names = {(r["workload"], r["name"]) for r in existing}
    for workload, grid, key, values in SWEEPS:
        if workload not in only:
            continue
        shape = shape_of(workload, tiny)
        most = shape["batch"] if key == "microbatches" else shape["seq_len"] // grid.get("sp", 1)
        for value in (*[v for v in values if v <= most], "model"):
            name = sweep_name(grid, key, value)
            if (workload, name) not in names:
                add(workload, name, 2, **grid, **{key: value})


def sweep_lines(rows: list[dict]) -> list[str]:
    """One line per sweep: the model's choice against the fastest fixed count of the same run."""
    lines = []
    for workload, grid, key, values in SWEEPS:
        fixed = [r for r in rows if r["workload"] == workload and r["median_step_s"]
                 and r["config"] in {sweep_name(grid, key, v) for v in values}]
        chosen = next((r for r in rows if r["workload"] == workload and r["median_step_s"]
                       and r["config"].startswith(sweep_name(grid, key, "model"))), None)
        if not fixed or chosen is None:
            continue
        best = min(fixed, key=lambda r: r["median_step_s"])
        excess = chosen["median_step_s"] / best["median_step_s"] - 1
        verdict = "met" if excess <= TARGET else "missed"
        line = (f"{workload} {_grid_name(grid)}: the model's choice ({chosen['config']}) "
                f"{chosen['median_step_s']:.3f} s is {100 * excess:+.1f}% of the fastest fixed count "
                f"({best['config']}, {best['median_step_s']:.3f} s) (target ≤ +{100 * TARGET:.0f}%: {verdict})")
        letter = LETTER[key]
        if _count(chosen["config"], letter) == _count(best["config"], letter):
            line += f"; the model chose that count: the two rows are one configuration timed twice"
        lines.append(line)
    return lines


def _count(config: str, letter: str) -> int | None:
    """The M or C a row ran: "pp=2, C=8" → 8, "pp=2, C by the model (M=1, C=8)" → 8."""
    found = re.findall(rf"\b{letter}=(\d+)", config)
    return int(found[-1]) if found else None
