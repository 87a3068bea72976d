"""`python -m mpirnn.report BENCH.json`: speedup and efficiency of a `python -m mpirnn.bench` run.

Writes beside the results file, named after it: NAME-report.md (per workload: every row's
median step time, the performance model's prediction, speedup against the workload's baseline,
the cores it used and the efficiency, speedup / cores), NAME-speedup.png and
NAME-efficiency.png (one bar per row, grouped by workload, the ideal marked). Cores are ranks ×
threads, so an oversubscribed row (4 ranks on 2 cores) shows what it got from what it asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

from mpirnn.tools.report_format import markdown as table
from mpirnn.tools.report_format import pyplot, save_figure

COLUMNS = ["workload", "config", "cores", "median_step_s", "predicted_step_s", "speedup", "efficiency", "target"]


def is_bench(path: Path) -> bool:
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "rows" in data and "meta" in data


def bench_rows(data: dict) -> list[dict]:
    """The timed rows with their cores (ranks × threads of the run behind them) and efficiency."""
    cores = {(r["workload"], r["name"]): r["ranks"] * r.get("threads", 1) for r in data.get("runs", [])}
    rows = []
    for row in data["rows"]:
        if row.get("speedup") is None or not row.get("median_step_s"):
            continue   # memory-only rows, failed runs
        used = cores.get((row["workload"], row["config"]))
        target = row.get("target") or ""
        if row.get("target_met") is not None:
            target += ": met" if row["target_met"] else ": missed"
        rows.append({**row, "cores": used, "target": target,
                     "efficiency": row["speedup"] / used if used else None})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Benchmark: {meta.get('command', '')}", "",
             f"{meta.get('date', '')}, {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, torch "
             f"{meta.get('torch', '?')}; speedup against each workload's baseline row, efficiency = speedup / "
             f"cores (ranks × threads).", ""]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        lines += [f"## {workload}", "", table([r for r in rows if r["workload"] == workload], COLUMNS)]
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, ideal, out: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    shown = [r for r in rows if r.get(metric) is not None]
    figure, axes = plt.subplots(figsize=(8, 0.32 * len(shown) + 1.2))
    labels = [f"{r['workload']}: {r['config']}" for r in shown]
    positions = list(range(len(shown)))[::-1]
    order = list(dict.fromkeys(r["workload"] for r in shown))   # one colour per workload
    axes.barh(positions, [r[metric] for r in shown], color=[f"C{order.index(r['workload']) % 10}" for r in shown])
    axes.scatter([ideal(r) for r in shown], positions, marker="|", s=200, color="k", label="ideal", zorder=3)
    axes.set_yticks(positions, labels, fontsize=7)
    axes.set_xlabel(metric)
    return save_figure(plt, figure, axes, out)


def report_bench(path: Path) -> int:
    data = json.loads(path.read_text())
    rows = bench_rows(data)
    if not rows:
        print(f"mpirnn.report: {path} holds no timed benchmark rows", flush=True)
        return 1
    text = markdown(rows, data.get("meta", {}))
    out = path.with_name(f"{path.stem}-report.md")
    out.write_text(text)
    plots = [plot(rows, "speedup", lambda r: r["cores"] or 1, path.with_name(f"{path.stem}-speedup.png")),
             plot(rows, "efficiency", lambda r: 1.0, path.with_name(f"{path.stem}-efficiency.png"))]
    print(text, end="")
    print(f"wrote {out}" + "".join(f", {p.name}" for p in plots if p))
    return 0
