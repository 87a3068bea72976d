"""Tables and plots from a folder of runs (a scaling study, or any runs' metrics).

    python -m mpirnn.report RESULTS [--warmup 2]

Each subfolder of RESULTS with a metrics.jsonl is one run (run.json, written by
mpirnn.scaling, names its strategy, mode and node count; otherwise they are read from
the metrics summary). Writes RESULTS/report.md, RESULTS/report.csv and, with matplotlib,
RESULTS/speedup.png and RESULTS/efficiency.png (with the ideal line).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

COLUMNS = ["strategy", "mode", "nodes", "ranks", "step_time_s", "speedup", "efficiency", "comm_share",
           "tokens_per_s", "final_loss"]


def read_run(folder: Path, warmup: int) -> dict | None:
    metrics = folder / "metrics.jsonl"
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if not r.get("summary")]
    summary = next((r for r in records if r.get("summary")), None)
    if not steps or summary is None:
        return None  # a run that failed or is still going: left out of the table
    timed = steps[warmup:] or steps
    meta = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    placement = summary.get("placement", [])
    nodes = meta.get("nodes") or len({p.get("slurm_node") or p.get("host") for p in placement}) or 1
    grid = summary.get("grid", {})
    strategy = meta.get("strategy") or "+".join(a for a in ("dp", "sp", "pp", "tp") if grid.get(a, 1) > 1) or "serial"
    return {"name": folder.name, "strategy": strategy, "mode": meta.get("mode", "strong"), "nodes": nodes,
            "ranks": summary.get("world_size", 1),
            "step_time_s": statistics.median(r["step_time_s"] for r in timed),
            "comm_share": statistics.median(r["comm_time_s"] / r["step_time_s"] for r in timed),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "final_loss": summary.get("final_loss")}


def add_scaling(rows: list[dict]) -> None:
    """Speedup and efficiency against the fewest-node run of the same strategy and mode."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["mode"]), []).append(row)
    for group in groups.values():
        base = min(group, key=lambda r: r["nodes"])
        for row in group:
            scale = row["nodes"] / base["nodes"]
            if row["mode"] == "weak":  # same work per rank: ideal is a constant step time
                row["speedup"] = scale * base["step_time_s"] / row["step_time_s"]
            else:
                row["speedup"] = base["step_time_s"] / row["step_time_s"]
            row["efficiency"] = row["speedup"] / scale


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def plot(rows: list[dict], out: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("mpirnn.report: matplotlib not installed (pip install 'mpirnn[plots]'): no plots", file=sys.stderr)
        return []
    written = []
    for metric, ideal in (("speedup", lambda n, base: n / base), ("efficiency", lambda n, base: 1.0)):
        figure, axes = plt.subplots(figsize=(5, 3.5))
        nodes = sorted({r["nodes"] for r in rows})
        axes.plot(nodes, [ideal(n, nodes[0]) for n in nodes], "k--", label="ideal")
        for key in sorted({(r["strategy"], r["mode"]) for r in rows}):
            group = sorted((r for r in rows if (r["strategy"], r["mode"]) == key), key=lambda r: r["nodes"])
            axes.plot([r["nodes"] for r in group], [r[metric] for r in group], "o-", label=f"{key[0]} {key[1]}")
        axes.set_xlabel("nodes")
        axes.set_ylabel(metric)
        axes.set_xticks(nodes)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = out / f"{metric}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpirnn.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the medians")
    args = parser.parse_args(argv)
    folders = sorted(p for p in args.results.iterdir() if p.is_dir()) if args.results.is_dir() else []
    rows = [row for folder in folders if (row := read_run(folder, args.warmup))]
    if not rows:
        print(f"mpirnn.report: no finished runs (metrics.jsonl with a summary) under {args.results}", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: (r["strategy"], r["mode"], r["nodes"]))
    add_scaling(rows)
    table = markdown(rows)
    (args.results / "report.md").write_text(table)
    with open(args.results / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plots = plot(rows, args.results)
    print(table, end="")
    print(f"wrote {args.results / 'report.md'}, report.csv" + "".join(f", {p.name}" for p in plots))
    return 0

