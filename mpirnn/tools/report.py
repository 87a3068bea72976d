"""Tables and plots from training runs: one run's curves, or a folder of runs and the scaling studies in it.

    python -m mpirnn.report runs/default                 # one run: its folder, or its metrics .jsonl file
    python -m mpirnn.report results/scan1 [--warmup 2]   # a folder of runs, e.g. from python -m mpirnn.scaling
    python -m mpirnn.report runs/bench/bench.json        # a python -m mpirnn.bench results file

One run: writes its curves beside the metrics file (loss.png with val_loss when logged,
grad_norm.png, tokens_per_s.png, lr.png when logged) and report.md (first/final loss, median
step time, tokens/s, grid, the share of the step in MPI and its two parts). A folder of runs
(metrics files anywhere below it, e.g. runs/<name>/metrics.jsonl): runs that share model, data
and batch (metrics.config.json beside each metrics file) but differ in grid or node count form
one scaling study; runs of one strategy and mode of an mpirnn.scaling sweep (run.json) form one
too. Writes report.md (a table per study with speedup and efficiency against its fewest-rank
run, then every other run on its own), report.csv, speedup.png and efficiency.png when there is
a study, and loss.png with every run's loss. Runs are named by their folder. `--warmup` steps
are left out of the medians. Every run's measured step time stands beside the one the
performance model predicts for its grid (mpirnn/tools/report_predictions.py; `--calibration
FILE`, else the runs' CPU model's newest calibration, the user's or a shipped one). A bench results
file goes to mpirnn/tools/report_bench.py. Exercised by: .venv/bin/python -m pytest -q
tests/test_scaling_report.py tests/test_report_runs.py tests/test_report_bench.py
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from mpirnn.tools.report_format import markdown, pyplot, save_figure

AXES = ("dp", "sp", "pp", "tp")
COLUMNS = ["run", "study", "strategy", "mode", "nodes", "ranks", "grid", "step_time_s", "predicted_step_s",
           "prediction_error", "speedup", "efficiency", "comm_share", "wait_share", "collective_share", "tokens_per_s",
           "final_loss"]
STUDY_COLUMNS = ["run", "grid", "nodes", "ranks", "step_time_s", "predicted_step_s", "vs_predicted", "speedup",
                 "efficiency", "comm_share", "tokens_per_s", "final_loss"]
SINGLE_COLUMNS = ["run", "grid", "nodes", "ranks", "steps", "first_loss", "final_loss", "step_time_s",
                  "predicted_step_s", "vs_predicted", "tokens_per_s"]
# One PNG per entry: its file name and the metrics drawn on it (those the lines have).
CURVES = [("loss", ("loss", "val_loss")), ("grad_norm", ("grad_norm",)), ("tokens_per_s", ("tokens_per_s",)),
          ("lr", ("lr",))]
# The config keys that make two runs the same problem; the rest (grid, steps, lr...) may differ.
SAME_DATA_KEYS = ("path", "seq_len", "batch_size")


# -- reading runs ------------------------------------------------------------------------

def read_records(metrics: Path) -> list[dict]:
    records = []
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            records.append(record)
    return records


def read_run(path: Path, warmup: int, name: str | None = None) -> dict | None:
    """One run's row; `path` is its folder or its metrics file. None: not a metrics file, or no steps."""
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    if not metrics.is_file():
        return None
    records = read_records(metrics)
    steps = [r for r in records if not r.get("summary") and "step" in r and "loss" in r]
    summary = next((r for r in reversed(records) if r.get("summary")), None)
    if not steps:
        return None
    config = _json(metrics.with_name(metrics.stem + ".config.json"))
    meta = _json(metrics.parent / "run.json") or {}
    timed = steps[warmup:] or steps
    done = summary or {}
    grid = done.get("grid") or {a: (config or {}).get("parallel", {}).get(a) for a in AXES}
    placement = done.get("placement", [])
    nodes = meta.get("nodes") or len({p.get("slurm_node") or p.get("host") for p in placement}) or 1
    return {"run": name or (metrics.parent.name if metrics.stem == "metrics" else metrics.stem),
            "metrics": metrics, "records": steps, "summary": summary, "config": config, "meta": meta,
            "strategy": meta.get("strategy") or "+".join(a for a in AXES if (grid.get(a) or 1) > 1) or "serial",
            "mode": meta.get("mode", "strong"), "nodes": nodes, "ranks": done.get("world_size"),
            "grid": "x".join("?" if grid.get(a) is None else str(grid[a]) for a in AXES),
            "steps": steps[-1]["step"], "first_loss": steps[0]["loss"],
            "final_loss": done.get("final_loss", steps[-1]["loss"]),
            "step_time_s": _median(timed, lambda r: r["step_time_s"]),
            "comm_share": _median(timed, lambda r: r.get("comm_time_s", 0.0) / r["step_time_s"]),
            # Its two parts (metrics since comm_wait_s was added): neighbours' messages, collectives.
            "wait_share": _median(timed, lambda r: r["comm_wait_s"] / r["step_time_s"]),
            "collective_share": _median(timed, lambda r: r["comm_collective_s"] / r["step_time_s"]),
            "tokens_per_s": _median(timed, lambda r: r["tokens_per_s"]),
            "timed_from": timed[0]["step"]}


def _median(records: list[dict], value) -> float | None:
    """Median of value(record); None when the lines lack what it reads (hand-made files)."""
    try:
        return statistics.median(value(r) for r in records)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_metrics(root: Path) -> list[Path]:
    """Metrics files anywhere under root (hidden folders such as .venv skipped)."""
    found = []
    for path in sorted(root.rglob("*.jsonl")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        first = _first_record(path)
        if "step" in first or first.get("summary"):  # other JSON Lines files are not runs
            found.append(path)
    return found


def _first_record(path: Path) -> dict:
    with open(path, errors="replace") as handle:
        line = handle.readline()
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


# -- grouping a folder of runs into scaling studies -----------------------------------------

def study_key(run: dict) -> tuple | None:
    """Runs with equal keys are the same problem; None: nothing says what the problem is."""
    config, meta = run["config"], run["meta"]
    if run["step_time_s"] is None:
        return None  # no step times: nothing to compare
    problem = None
    if config:
        data = {k: v for k, v in config.get("data", {}).items() if k in SAME_DATA_KEYS}
        if meta.get("mode") == "weak":  # a weak sweep grows the batch (dp) or sequence (sp) on purpose
            data.pop("batch_size" if meta.get("strategy") == "dp" else "seq_len", None)
        problem = json.dumps({"model": config.get("model"), "data": data}, sort_keys=True)
    if meta.get("strategy"):
        return meta["strategy"], meta.get("mode", "strong"), problem
    return None if problem is None else ("", "strong", problem)


def group_studies(rows: list[dict]) -> tuple[list[tuple[str, list[dict]]], list[dict]]:
    """(label, runs) per scaling study, and the runs that belong to none."""
    groups: dict[tuple, list[dict]] = {}
    alone = []
    for row in rows:
        key = study_key(row)
        if key is None:
            alone.append(row)
        else:
            groups.setdefault(key, []).append(row)
    studies, labels = [], set()
    for key, group in groups.items():
        if len({(r["grid"], r["nodes"]) for r in group}) < 2:
            alone += group  # the same grid again is a repeat, not a scaling study
            continue
        label = f"{key[0]} {key[1]}" if key[0] else _problem_label(group[0]["config"])
        while label in labels:
            label += "'"
        labels.add(label)
        group.sort(key=lambda r: (r["ranks"] or 0, r["nodes"], r["run"]))
        for row in group:
            row["study"] = label
        studies.append((label, group))
    studies.sort(key=lambda s: s[0])
    alone.sort(key=lambda r: r["run"])
    return studies, alone


def _problem_label(config: dict) -> str:
    model, data = config.get("model", {}), config.get("data", {})
    return (f"{model.get('cell')} {model.get('layers')}x{model.get('hidden')}, "
            f"batch {data.get('batch_size')} x {data.get('seq_len')}")


def add_scaling(study: list[dict]) -> None:
    """Speedup and efficiency against the study's run with the fewest ranks (then nodes)."""
    base = min(study, key=lambda r: (r["ranks"] or 1, r["nodes"]))
    for row in study:
        scale = (row["ranks"] or 1) / (base["ranks"] or 1)
        if row["mode"] == "weak":  # same work per rank: ideal is a constant step time
            row["speedup"] = scale * base["step_time_s"] / row["step_time_s"]
        else:
            row["speedup"] = base["step_time_s"] / row["step_time_s"]
        row["efficiency"] = row["speedup"] / scale
        row["baseline"] = base["run"]


# -- writing -----------------------------------------------------------------------------

def plot_curves(run: dict, prefix: str) -> list[Path]:
    """One PNG per metric the run's lines have, beside its metrics file."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    for figure_name, keys in CURVES:
        present = [k for k in keys if any(r.get(k) is not None for r in run["records"])]
        if not present:
            continue
        figure, axes = plt.subplots(figsize=(6, 3.5))
        for key in present:
            points = [(r["step"], r[key]) for r in run["records"] if r.get(key) is not None]
            axes.plot(*zip(*points), "o-" if key == "val_loss" or len(points) < 20 else "-", label=key, markersize=3)
        axes.set_xlabel("step")
        axes.set_ylabel(figure_name)
        axes.set_title(run["run"], fontsize=9)
        written.append(save_figure(plt, figure, axes, run["metrics"].with_name(f"{prefix}{figure_name}.png")))
    return written


def plot_studies(studies: list[tuple[str, list[dict]]], out: Path) -> list[Path]:
    """speedup.png and efficiency.png against ranks, the ideal dashed, every point named by its run."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    ranks = sorted({r["ranks"] or 1 for _, study in studies for r in study})
    for metric, ideal in (("speedup", lambda n: n / ranks[0]), ("efficiency", lambda n: 1.0)):
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot(ranks, [ideal(n) for n in ranks], "k--", label="ideal")
        for label, study in studies:
            xs = [r["ranks"] or 1 for r in study]
            axes.plot(xs, [r[metric] for r in study], "o-", label=label)
            for x, row in zip(xs, study):
                axes.annotate(row["run"], (x, row[metric]), textcoords="offset points", xytext=(4, 4), fontsize=6)
        axes.set_xlabel("ranks")
        axes.set_ylabel(metric)
        axes.set_xticks(ranks)
        written.append(save_figure(plt, figure, axes, out / f"{metric}.png"))
    return written


def plot_losses(rows: list[dict], out: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    figure, axes = plt.subplots(figsize=(6, 4))
    for row in rows:
        axes.plot([r["step"] for r in row["records"]], [r["loss"] for r in row["records"]],
                  "o-" if len(row["records"]) < 20 else "-", markersize=3,  # a one-step run is still seen
                  label=row["run"] + ("" if row["summary"] else " (unfinished)"))
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    return [save_figure(plt, figure, axes, out / "loss.png")]


def single_summary(run: dict, plots: list[Path], warmup: int, prediction_note: str = "") -> str:
    summary, config = run["summary"] or {}, run["config"] or {}
    first, last = run["records"][0], run["records"][-1]
    lines = [f"# Run {run['run']}", "", f"- metrics: {run['metrics']}"]
    if run["summary"] is None:
        lines.append("- unfinished: no summary line yet (still running, or it failed)")
    lines.append(f"- steps: {last['step']}" + (f" of {summary['steps']}" if "steps" in summary else ""))
    lines.append(f"- loss: {first['loss']:.4f} at step {first['step']} -> {run['final_loss']:.4f} at step {last['step']}")
    validated = [r for r in run["records"] if r.get("val_loss") is not None]
    if validated:
        lines.append(f"- val_loss: {validated[0]['val_loss']:.4f} -> {validated[-1]['val_loss']:.4f}")
    skipped = f"the first {warmup} left out" if run["timed_from"] > first["step"] else "all steps"
    if run["step_time_s"] is not None:
        lines.append(f"- median step time: {run['step_time_s']:.4g} s ({skipped})")
    if run.get("comm_share") is not None:
        parts = (f" (waiting for neighbours' messages {100 * run['wait_share']:.0f}%, in collectives "
                 f"{100 * run['collective_share']:.0f}%)" if run.get("wait_share") is not None else "")
        lines.append(f"- time in MPI: {100 * run['comm_share']:.0f}% of the median step{parts}")
    if run.get("predicted_step_s") is not None:
        lines.append(f"- predicted step time: {run['predicted_step_s']:.4g} s by the performance model "
                     f"(measured {run['vs_predicted']} against it; {prediction_note})")
    elif run["step_time_s"] is not None and (prediction_note or run.get("prediction_note")):
        lines.append(f"- predicted step time: none ({run.get('prediction_note') or prediction_note})")
    if run["tokens_per_s"] is not None:
        overall = f"; {summary['tokens_per_s']:.0f} over the whole run" if "tokens_per_s" in summary else ""
        lines.append(f"- tokens/s: {run['tokens_per_s']:.0f} median per step{overall}")
    lines.append(f"- grid (dp x sp x pp x tp): {run['grid']}" + (f" on {run['ranks']} rank(s), {run['nodes']} node(s)"
                                                               if run["ranks"] else ""))
    if config:
        model, data = config.get("model", {}), config.get("data", {})
        lines.append(f"- model: {model.get('cell')} {model.get('layers')}x{model.get('hidden')} (embed "
                     f"{model.get('embed')}); data {data.get('path')}, batch {data.get('batch_size')} x "
                     f"{data.get('seq_len')}")
    if plots:
        lines.append("- plots: " + ", ".join(p.name for p in plots))
    return "\n".join(lines) + "\n"


def predict_rows(rows: list[dict], calibration: str | None) -> str:
    """Adds the model's step time to every row it describes; returns the line saying which calibration."""
    from mpirnn.tools import report_predictions
    cal, note = report_predictions.load_for(rows, calibration)
    report_predictions.add_predictions(rows, cal)
    for row in rows:
        error = row.get("prediction_error")
        row["vs_predicted"] = f"{100 * error:+.0f}%" if error is not None else None
    return note


def report_single(path: Path, warmup: int, calibration: str | None = None) -> int:
    run = read_run(path, warmup)
    if run is None:
        print(f"mpirnn.report: no step lines in {path}: is it a metrics file (output.metrics)?", file=sys.stderr)
        return 1
    prefix = "" if run["metrics"].stem == "metrics" else run["metrics"].stem + "-"
    plots = plot_curves(run, prefix)
    note = predict_rows([run], calibration)
    text = single_summary(run, plots, warmup, note)
    out = run["metrics"].with_name(f"{prefix}report.md")
    out.write_text(text)
    print(text, end="")
    print(f"wrote {out}" + "".join(f", {p.name}" for p in plots))
    return 0


def report_folder(root: Path, metrics_files: list[Path], warmup: int, calibration: str | None = None) -> int:
    rows, unfinished = [], []
    for path in metrics_files:
        name = str(path.parent.relative_to(root)) if path.stem == "metrics" else str(path.relative_to(root))[:-6]
        row = read_run(path, warmup, name=name if name != "." else root.name)
        if row is None:
            continue
        (rows if row["summary"] is not None else unfinished).append(row)
    if not rows:
        print(f"mpirnn.report: no finished runs (metrics .jsonl with a summary line) under {root}", file=sys.stderr)
        return 1
    studies, alone = group_studies(rows)
    note = predict_rows(rows, calibration)
    parts = [f"# Runs under {root}\n", f"Predicted step times: the performance model (docs/performance.md), {note}.\n"
             if note.startswith("calibration") else note[0].upper() + note[1:] + ".\n"]
    for label, study in studies:
        add_scaling(study)
        parts.append(f"## Scaling study: {label}\n\nSame model, data and batch; speedup and efficiency against "
                     f"{study[0]['baseline']} (fewest ranks).\n\n" + markdown(study, STUDY_COLUMNS))
    if alone:
        parts.append("## Runs not in a study\n\nNo other run has the same model, data and batch on another grid"
                     " (or there is no metrics.config.json to tell).\n\n" + markdown(alone, SINGLE_COLUMNS))
    unpredicted = [r for r in rows if r.get("predicted_step_s") is None and r.get("prediction_note")]
    if unpredicted:
        parts.append("No predicted step time for: " + ", ".join(f"{r['run']} ({r['prediction_note']})"
                                                               for r in unpredicted) + "\n")
    if unfinished:
        parts.append("Left out (no summary line: still running, or failed): "
                     + ", ".join(r["run"] for r in unfinished) + "\n")
    plots = (plot_studies(studies, root) if studies else []) + plot_losses(rows + unfinished, root)
    text = "\n".join(parts)
    (root / "report.md").write_text(text)
    table = [row for _, study in studies for row in study] + alone
    with open(root / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    print(text, end="")
    print(f"wrote {root / 'report.md'}, report.csv" + "".join(f", {p.name}" for p in plots))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpirnn.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a run folder, a metrics .jsonl file, a folder of runs, or a "
                                                "python -m mpirnn.bench results .json (mpirnn/tools/report_bench.py)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the medians")
    parser.add_argument("--calibration", help="performance-model calibration for the predicted step times "
                                              "(default: the newest of the runs' CPU model, the user's or a shipped one)")
    args = parser.parse_args(argv)
    path = args.path
    if not path.exists():
        print(f"mpirnn.report: {path} does not exist", file=sys.stderr)
        return 1
    from mpirnn.tools.report_bench import is_bench, report_bench
    if is_bench(path):
        return report_bench(path)
    if path.is_file() or (path / "metrics.jsonl").is_file():
        return report_single(path, args.warmup, args.calibration)
    found = find_metrics(path)
    if len(found) == 1:  # a folder holding one run somewhere below: that run's report
        return report_single(found[0], args.warmup, args.calibration)
    return report_folder(path, found, args.warmup, args.calibration)
