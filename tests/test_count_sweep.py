"""`python -m mpirnn.bench --sweep-counts`: which rows it adds and how it judges the model's choice.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_count_sweep.py
"""

from mpirnn.tools.count_sweep import add_sweeps, sweep_lines


def planned(only, tiny=False, existing=()):
    runs = [{"workload": w, "name": n} for w, n in existing]

    def add(workload, name, ranks, **kw):
        runs.append({"workload": workload, "name": name, "ranks": ranks, **kw})
    add_sweeps(add, list(runs), only, tiny)
    return runs[len(existing):]


def test_rows_cover_every_count_the_shape_allows_once_and_the_models_choice():
    rows = planned(["W2"], existing=[("W2", "sp=2, M=4")])
    names = [r["name"] for r in rows]
    # W2's batch is 8: no M = 16; M = 4 is already one of the bench's own rows.
    assert names == ["sp=2, M=1", "sp=2, M=2", "sp=2, M=8", "sp=2, M by the model"]
    assert rows[-1]["microbatches"] == "model" and all(r["sp"] == 2 and r["ranks"] == 2 for r in rows)
    w5 = planned(["W5"])
    assert [r["chunks"] for r in w5] == [2, 4, 8, 16, "model"] and all(r["pp"] == 2 for r in w5)
    assert planned(["W3"]) == []


def row(config, seconds):
    return {"workload": "W1", "config": config, "median_step_s": seconds}


def test_the_models_choice_is_judged_against_the_fastest_fixed_count():
    rows = [row("sp=2, M=2", 0.42), row("sp=2, M=8", 0.37), row("sp=2, M by the model (M=4)", 0.40)]
    (line,) = sweep_lines(rows)
    assert "+8.1% of the fastest fixed count (sp=2, M=8, 0.370 s)" in line and "missed" in line
    assert "timed twice" not in line
    rows[-1] = row("sp=2, M by the model (M=8)", 0.375)
    (line,) = sweep_lines(rows)
    assert "+1.4%" in line and "met" in line and "one configuration timed twice" in line
