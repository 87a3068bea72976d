"""Benchmark workloads side by side: sequence- and data-parallel steps against one rank and PyTorch DDP.

    python -m mpirnn.bench [--only W1,W3] [--steps 5] [--repeat 3] [--out runs/bench/bench.json] [--device cuda]
                           [--calibration FILE] [--sweep-counts]

Run it on one process: it starts the MPI runs it needs itself (`mpirun -n K python -m
mpirnn.bench --worker ...`, one torch thread per rank unless a row says otherwise),
grouping the runs of one rank count into one launch, and the PyTorch DDP peers under
`torchrun` (mpirnn/tools/ddp_peer.py); then prints a markdown table, with each row's step
time as the performance model predicts it (mpirnn/perf/, from --calibration or a
calibration of this machine made first, about 15 s), and writes every number to a JSON
file. The workloads and what they measure are in benchmarks/README.md;
mpirnn/tools/workloads.py runs them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mpirnn.perf.processes import KEEP_MEMORY, mpiexec
from mpirnn.tools.shapes import W2_MICROBATCHES, WORKLOADS, shape_of

RTOL = 1e-5        # the exactness contract in float32
BF16_RTOL = 6e-2   # ... and in bf16, against the serial bf16 run (docs/design.md, "Exactness")
DDP_NAME = "PyTorch DDP dp=2 (torchrun, gloo)"
DDP_TARGET = 0.95  # mpirnn dp=2 step / DDP dp=2 step on the development machine
PREDICTION_TOLERANCE = 0.20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpirnn.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads (W1,W2,W3,dp)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole plan this many times, one after another, and pool the timed steps "
                             "(a burst of load from elsewhere then spoils one share, not a whole row)")
    parser.add_argument("--out", default="runs/bench/bench.json", help="JSON results file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device for every run; when given, also time plain PyTorch (cuDNN on GPU) on "
                             "W1's and W3's shapes at -n 1")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory (no mmap, no trim), so no step pays page faults for "
                             "memory the previous step gave back and ratios compare compute; default: glibc as is")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (smoke test; the numbers mean nothing)")
    parser.add_argument("--calibration", help="performance-model calibration for the predicted column "
                                              "(default: calibrate this machine first, written beside --out)")
    parser.add_argument("--sweep-counts", action="store_true",
                        help="also time every fixed microbatch/chunk count on W1, W2 and W5 beside the performance "
                             "model's choice (mpirnn/tools/count_sweep.py)")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="bf16 rows (train.precision = bf16) beside the float32 ones for W1, W3, W4 and W5: "
                             "auto = where bf16 runs natively (CUDA, a CPU with avx512_bf16 or amx_bf16); "
                             "elsewhere training refuses it (docs/precision.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)   # spec file: this process is an MPI rank
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ the plan


def plan(args) -> list[dict]:
    """Every run, in table order. `fresh`: must start a new process (its first step's memory counts)."""
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"mpirnn.bench: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    base = dict(tiny=args.tiny, device=args.device or "cpu", steps=args.steps, warmup=args.warmup, threads=1,
                dp=1, sp=1, pp=1, tp=1, microbatches=0, chunks=0, method=None, plain=False, ddp=False, fresh=False, compare_to="1 rank",
                target=None, precision="float32")
    runs = []

    def add(workload, name, ranks, **kw):
        runs.append({**base, "workload": workload, "name": name, "ranks": ranks, "order": len(runs), **kw})

    if "W1" in only:
        add("W1", "1 rank", 1)
        add("W1", "sp=2, M=8", 2, sp=2, microbatches=8)
        add("W1", "sp=2, M=4", 2, sp=2, microbatches=4)  # same bubble-model bound here, half the messages
        # parallel.calibration's choice, as training runs it; the model's bound is the speedup it
        # predicts with its bubble and its thin-microbatch costs (docs/performance.md).
        add("W1", "sp=2, M by the model", 2, sp=2, microbatches="model",
            target={"speedup": 1.5, "model_share": 0.9, "exact": True})
        add("W1", "dp=2 (-n 2)", 2, dp=2)
        # The two layers on two ranks, overlapped through time chunks; the stages are uneven, so the
        # target is 90% of the bound their measured costs allow (pipeline_bound).
        add("W1", "pp=2, C=8", 2, pp=2, chunks=8, target={"bound_share": 0.9, "exact": True})
        add("W1", "tp=2", 2, tp=2)                  # each layer's hidden units on two ranks, exchanged every step
        if base["device"] == "cpu":
            add("W1", DDP_NAME, 2, dp=2, ddp=True)
        if not args.tiny and base["device"] == "cpu":
            add("W1", "1 rank × 2 threads", 1, threads=2)
    if "W2" in only:  # fresh processes: their first step's memory is the activation memory
        m = min(W2_MICROBATCHES, shape_of("W2", args.tiny)["batch"])
        add("W2", "1 rank", 1, fresh=True)
        add("W2", f"sp=2, M={m}", 2, sp=2, microbatches=m, fresh=True)
        add("W2", "sp=2, M by the model", 2, sp=2, microbatches="model")
        add("W2", f"sp=4, M={m} (oversubscribed: memory only)", 4, sp=4, microbatches=m, fresh=True, steps=0,
            warmup=1, target={"memory": 0.35})
    if "W3" in only:
        add("W3", "1 rank", 1, method="each")  # the worker runs one row per scan method
        # The cross-rank scan uses log_scan's default ("auto" = chunked): its loss is compared with that one's.
        add("W3", "sp=2 (cross-rank scan, default method)", 2, sp=2, compare_to="1 rank, chunked",
            target={"speedup": 1.8})
    if "W4" in only:
        add("W4", "1 rank", 1)
        add("W4", "tp=2", 2, tp=2, target={"speedup": 1.5, "state_memory": 0.55, "exact": True})
    if "W5" in only:
        add("W5", "1 rank", 1)
        add("W5", "pp=2, C=8", 2, pp=2, chunks=8, target={"speedup": 1.6, "exact": True})
        add("W5", "pp=2, C=16", 2, pp=2, chunks=16)
        add("W5", "pp=4, C=16 (-n 4, oversubscribed)", 4, pp=4, chunks=16)
    if "dp" in only:
        add("dp", "1 rank", 1)
        add("dp", "dp=2 (-n 2)", 2, dp=2)
        if base["device"] == "cpu":
            add("dp", DDP_NAME, 2, dp=2, ddp=True)
        if not args.tiny:
            add("dp", "dp=4 (-n 4, oversubscribed)", 4, dp=4)
        if not args.tiny and base["device"] == "cpu":
            add("dp", "1 rank × 2 threads", 1, threads=2)
    if bf16_rows(args, base["device"]):
        add_bf16(add, only)
    if getattr(args, "sweep_counts", False):
        from mpirnn.tools.count_sweep import add_sweeps
        add_sweeps(add, runs, only, args.tiny)
    if args.device:
        for workload, module in (("W1", "LSTM"), ("W3", "GRU")):
            if workload in only:
                add(workload, f"plain PyTorch nn.{module}, 1 rank", 1, plain=True)
    return runs


def bf16_rows(args, device: str) -> bool:
    """Whether the plan gets its bf16 rows: asked for, or (auto) where bf16 runs natively."""
    choice = getattr(args, "bf16", "auto")
    if choice != "auto":
        return choice == "on"
    from mpirnn.host import native_bf16
    if device == "cuda" or native_bf16():
        return True
    print("mpirnn.bench: no bf16 rows: this CPU has no native bf16, so training refuses train.precision = bf16 "
          "(docs/precision.md); --bf16 on times the emulation anyway", file=sys.stderr, flush=True)
    return False


def add_bf16(add, only: list[str]) -> None:
    """bf16 beside float32 on W1, W3, W4, W5: the serial bf16 run, and each workload's main grid in bf16
    compared with it (within BF16_RTOL). Speedups are against the float32 1-rank row, as training would
    gain them; the targets are issue 22's for a CPU with AMX (benchmarks/README.md)."""
    bf16 = dict(precision="bf16", compare_to="1 rank, bf16", rtol=BF16_RTOL)
    if "W1" in only:
        add("W1", "1 rank, bf16", 1, **{**bf16, "compare_to": "1 rank"}, target={"speedup": 1.8})
        add("W1", "sp=2, M=4, bf16", 2, sp=2, microbatches=4, **bf16)
        # bf16's fused layers pay a large fixed cost per time step (oneDNN, measured: docs/precision.md),
        # so thin microbatches cost more than in float32: the count from a bf16 calibration.
        add("W1", "sp=2, M by the model, bf16", 2, sp=2, microbatches="model", **bf16,
            target={"speedup": 2.7, "exact": True})
        add("W1", "dp=2 (-n 2), bf16", 2, dp=2, **bf16)
        add("W1", "pp=2, C=8, bf16", 2, pp=2, chunks=8, **bf16)
        add("W1", "tp=2, bf16", 2, tp=2, **bf16)
    if "W3" in only:
        add("W3", "1 rank, bf16", 1, **{**bf16, "compare_to": "1 rank, chunked"})
        add("W3", "sp=2 (cross-rank scan), bf16", 2, sp=2, **bf16)
    if "W4" in only:
        add("W4", "1 rank, bf16", 1, **{**bf16, "compare_to": "1 rank"})
        add("W4", "tp=2, bf16", 2, tp=2, **bf16)
    if "W5" in only:
        add("W5", "1 rank, bf16", 1, **{**bf16, "compare_to": "1 rank"})
        add("W5", "pp=2, C=8, bf16", 2, pp=2, chunks=8, **bf16)


def choose_modelled_counts(runs: list[dict], cals: dict) -> list[dict]:
    """Rows whose microbatch count is "model": the performance model's choice for the shape and grid,
    as a run with parallel.calibration would make (mpirnn/training/layout.py), from the calibration in
    the row's precision (`cals`: {precision: Calibration or None}); dropped without one."""
    from mpirnn.tools.bench_predictions import shape_for
    from mpirnn.perf.ranking import best_microbatches
    chosen = []
    for run in runs:
        if "model" in (run["microbatches"], run["chunks"]):
            cal = cals.get(run["precision"])
            if cal is None:
                continue
            grid = {axis: run.get(axis, 1) for axis in ("dp", "sp", "pp", "tp")}
            layout = best_microbatches(shape_for(shape_of(run["workload"], run["tiny"])), grid, cal).layout
            counts = f"M={layout.microbatches}" + (f", C={layout.chunks}" if run["chunks"] == "model" else "")
            run = {**run, "microbatches": layout.microbatches, "name": f"{run['name']} ({counts})",
                   "chunks": layout.chunks if run["chunks"] == "model" else run["chunks"]}
        chosen.append(run)
    return chosen


def launches(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by (ranks, threads, DDP or not), one launch each. A `fresh` run opens a new launch,
    so those go first: the rest of their rank count then joins them."""
    groups: dict = {}
    ordered = []
    for run in sorted(runs, key=lambda r: not r["fresh"]):
        key = (run["ranks"], run["threads"], run["ddp"])
        if run["fresh"] or key not in groups:
            groups[key] = []
            ordered.append(groups[key])
        groups[key].append(run)
    return ordered


# ------------------------------------------------------------------ launching


def torchrun() -> list[str]:
    """PyTorch's launcher from the same environment as this Python."""
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def start(group: list[dict], workdir: Path, index: str, malloc: str = "keep"):
    """Start one group of specs under mpirun, or torchrun for the DDP peer (a process group of its own,
    so a hang can be killed whole)."""
    specs, result = workdir / f"specs-{index}.json", workdir / f"result-{index}.json"
    specs.write_text(json.dumps(group))
    ranks, threads = group[0]["ranks"], group[0]["threads"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           **(KEEP_MEMORY if malloc == "keep" else {})}
    if group[0]["ddp"]:
        command = [*torchrun(), "--standalone", f"--nproc-per-node={ranks}", "-m", "mpirnn.tools.ddp_peer",
                   "--worker", str(specs), "--result", str(result)]
    else:
        command = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpirnn.bench",
                   "--worker", str(specs), "--result", str(result)]
    print(f"mpirnn.bench: {'torchrun' if group[0]['ddp'] else '-n'} {ranks}: " + ", ".join(f"{r['workload']} {r['name']}" for r in group),
          file=sys.stderr, flush=True)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    return process, result, group


def cause(output: str) -> str:
    """The line of a failed launch's output that says why: the last one naming an error (torchrun ends
    with a banner of '=' and a table), else the last line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip().strip("=")]
    named = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    return (named or lines or ["no output"])[-1]


def finish(launched, timeout: float) -> tuple[list[dict], str | None]:
    """Wait for a launch; (its results, an error line or None)."""
    process, result, group = launched
    try:
        output, _ = process.communicate(timeout=timeout)
        error = None if process.returncode == 0 else f"exit {process.returncode}: {cause(output)}"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # our own launch's process group
        output, _ = process.communicate()
        error = f"timed out after {timeout:.0f} s"
    results = json.loads(result.read_text()) if result.exists() else []
    if error and group[0]["ddp"] and len(results) == len(group):
        # gloo sometimes aborts a rank while the process group is torn down, after every timed step and
        # the results are written (seen once in CI, under load): the measurements stand, say so and go on.
        print(f"mpirnn.bench: note: the PyTorch DDP peer's launch exited with an error after all its runs "
              f"had finished and written their results ({cause(output or '')}); results kept",
              file=sys.stderr, flush=True)
        return results, None
    if error:
        error = f"-n {group[0]['ranks']} ({', '.join(r['name'] for r in group)}): {error}"
        tail = "\n".join((output or "").strip().splitlines()[-25:])
        print(f"mpirnn.bench: failed: {error}\n--- the end of its output:\n{tail}\n---", file=sys.stderr, flush=True)
    return results, error


def worker(args) -> int:
    from mpi4py import MPI

    from mpirnn.tools.workloads import expand, run_spec
    done = []
    for spec in expand(json.loads(Path(args.worker).read_text())):
        summary = run_spec(spec, MPI.COMM_WORLD)
        if MPI.COMM_WORLD.rank == 0:
            done.append(summary)
            Path(args.result).write_text(json.dumps(done))  # after each spec: partial results survive a failure
    return 0


# ------------------------------------------------------------------ the table


def pool(results: list[dict]) -> list[dict]:
    """One result per run: the timed steps of all passes together, medians over them, the rest from the first."""
    pooled: dict = {}
    for r in results:
        first = pooled.setdefault((r["order"], r["name"]), {**r, "step_times_s": [], "contended_cpu_s": [],
                                                              "waits": [], "passes": 0})
        first["step_times_s"] += r["step_times_s"]
        first["contended_cpu_s"] += r["contended_cpu_s"]
        first["waits"].append(r["mpi_wait_s_per_rank"])
        first["passes"] += 1
        first["losses_same_every_pass"] = first.get("losses_same_every_pass", True) and r["losses"] == first["losses"]
    for r in pooled.values():
        # Quiet steps: other processes took under 5% of the cores this run needed (jiffy slack 0.03 s).
        slack = [0.03 + 0.05 * t * r["ranks"] * r["threads"] for t in r["step_times_s"]]
        r["quiet_steps"] = [t for t, c, s in zip(r["step_times_s"], r["contended_cpu_s"], slack) if c <= s]
        times = r["quiet_steps"] if len(r["quiet_steps"]) >= 3 else r["step_times_s"]
        r["median_step_s"], r["min_step_s"] = (statistics.median(times), min(times)) if times else (None, None)
        r["mpi_wait_s_per_rank"] = [statistics.median(rank) for rank in zip(*r.pop("waits"))]
    return sorted(pooled.values(), key=lambda r: r["order"])


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def rows_for(workload: str, results: list[dict], cals: dict | None = None) -> list[dict]:
    """Table rows of one workload: speedups against its baseline, memory against 1 rank, exactness,
    and the performance model's prediction where a calibration in the row's precision is given
    (`cals`: {precision: Calibration or None})."""
    runs = [r for r in results if r["workload"] == workload]
    if not runs:
        return []
    serial = [r for r in runs if r["ranks"] == 1 and r["threads"] == 1 and not r["plain"] and r["median_step_s"]
              and r.get("precision", "float32") == "float32"]
    baseline = min(serial, key=lambda r: r["median_step_s"]) if serial else None
    serial_all = [r for r in runs if r["ranks"] == 1 and r["threads"] == 1 and not r["plain"] and r["median_step_s"]
                  and r.get("method") in (None, "chunked")]
    base_memory = max(baseline["saved_bytes_per_rank"]) if baseline else None
    rows = []
    for run in runs:
        shape_tokens = run["tokens_per_step"]
        median = run["median_step_s"]
        row = {"workload": workload, "config": run["name"], "median_step_s": median, "min_step_s": run["min_step_s"],
               "mpi_wait_s": run["mpi_wait_s_per_rank"],
               "quiet": f"{len(run['quiet_steps'])}/{len(run['step_times_s'])}",
               "tokens_per_s": shape_tokens / median if median else None,
               "speedup": baseline["median_step_s"] / median if baseline and median else None,
               "baseline": run is baseline,
               "saved_mib": max(run["saved_bytes_per_rank"]) / 2**20,
               # Only a fresh process's first step has a clean RSS baseline (freed memory stays in the heap).
               "rss_mib": max(run["peak_bytes_per_rank"]) / 2**20 if run["fresh"] else None,
               "memory_vs_1_rank": max(run["saved_bytes_per_rank"]) / base_memory if base_memory else None,
               "loss_rel_diff": None, "exact": None, "predicted_step_s": None, "prediction_error": None,
               "state_mib": max(run.get("state_bytes_per_rank", [0])) / 2**20,
               "state_vs_1_rank": (max(run["state_bytes_per_rank"]) / max(baseline["state_bytes_per_rank"])
                                   if baseline and run.get("state_bytes_per_rank") and baseline.get("state_bytes_per_rank")
                                   else None),
               "bound": pipeline_bound(run), "precision": run.get("precision", "float32"),
               "rtol": run.get("rtol", RTOL)}
        own = next((r for r in serial_all if r.get("precision", "float32") == row["precision"]), None)
        if row["precision"] != "float32" and own is not None and own is not run and median:
            row["speedup_same_precision"] = own["median_step_s"] / median   # against 1 rank in bf16
        if row["bound"] and row["speedup"]:
            # The stages' bound is over this row's own precision: its share too (bf16 against 1 rank bf16).
            row["bound_share"] = row.get("speedup_same_precision", row["speedup"]) / row["bound"]
        cal = (cals or {}).get(run.get("precision", "float32"))
        if cal is not None and median:
            from mpirnn.tools.bench_predictions import predicted_step_s
            row["predicted_step_s"] = predicted_step_s(run, shape_of(workload, run["tiny"]), cal)
            if row["predicted_step_s"]:
                row["prediction_error"] = row["predicted_step_s"] / median - 1
            # The model's bound only where a target asks for it (one more prediction, of the baseline).
            wanted = "model_share" in (run["target"] or {}) and baseline
            base_predicted = wanted and predicted_step_s(baseline, shape_of(workload, baseline["tiny"]), cal)
            if base_predicted and row["predicted_step_s"] and row["speedup"]:
                row["model_bound"] = base_predicted / row["predicted_step_s"]
                row["model_share"] = row["speedup"] / row["model_bound"]
        reference = next((r for r in runs if r["name"] == run["compare_to"]), None)
        if reference and reference is not run and run["threads"] == 1 and not run["plain"]:  # DDP included
            row["loss_rel_diff"] = relative(run["losses"][0], reference["losses"][0])
            row["exact"] = row["loss_rel_diff"] <= run.get("rtol", RTOL)
            n = min(len(run["losses"]), len(reference["losses"]))
            row["trajectory_rel_diff"] = max(relative(a, b) for a, b in zip(run["losses"][:n], reference["losses"][:n]))
        row["target"], row["target_met"] = judge(run["target"], row)
        rows.append(row)
    return rows


def pipeline_bound(run: dict) -> float | None:
    """The speedup a pipeline run's own stage costs allow, for runs with pp > 1.

    Each rank's compute is its step time less its MPI wait. With C chunks the stages overlap
    except for filling and draining: a step takes about max_p(s_p)*(C-1)/C + sum_p(s_p)/C
    against sum_p(s_p) for one rank doing all of it (docs/parallelism.md, the bubble).
    """
    if run.get("pp", 1) <= 1 or not run.get("median_step_s") or run.get("sp", 1) > 1 or run.get("dp", 1) > 1:
        return None
    chunks = run.get("chunks") or 1
    stages = [max(run["median_step_s"] - wait, 0.0) for wait in run["mpi_wait_s_per_rank"]]
    total, slowest = sum(stages), max(stages)
    if total <= 0:
        return None
    return total / (slowest * (chunks - 1) / chunks + total / chunks)


def judge(target: dict | None, row: dict) -> tuple[str, bool | None]:
    """(the target in words, whether this row meets it); ("", None) for rows without one."""
    if not target:
        return "", None
    words, met = [], True
    if "speedup" in target:
        words.append(f"≥ {target['speedup']}×")
        met = met and row["speedup"] is not None and row["speedup"] >= target["speedup"]
    if "memory" in target:
        words.append(f"memory ≤ {100 * target['memory']:.0f}% of 1 rank")
        met = met and row["memory_vs_1_rank"] is not None and row["memory_vs_1_rank"] <= target["memory"]
    if "state_memory" in target:
        words.append(f"parameters + optimizer ≤ {100 * target['state_memory']:.0f}% of 1 rank")
        met = met and row["state_vs_1_rank"] is not None and row["state_vs_1_rank"] <= target["state_memory"]
    if "bound_share" in target:
        words.append(f"≥ {100 * target['bound_share']:.0f}% of the stages' bound")
        met = met and row.get("bound_share") is not None and row["bound_share"] >= target["bound_share"]
    if "model_share" in target:
        words.append(f"≥ {100 * target['model_share']:.0f}% of the model's bound")
        met = met and row.get("model_share") is not None and row["model_share"] >= target["model_share"]
    if target.get("exact"):
        words.append("exact")
        met = met and bool(row["exact"])
    return ", ".join(words), met


def ddp_ratios(rows: list[dict]) -> dict:
    """{workload: mpirnn dp=2 median step / PyTorch DDP dp=2 median step} where both ran."""
    ratios = {}
    for workload in WORKLOADS:
        mine = next((r for r in rows if r["workload"] == workload and r["config"] == "dp=2 (-n 2)"), None)
        peer = next((r for r in rows if r["workload"] == workload and r["config"] == DDP_NAME), None)
        if mine and peer and mine["median_step_s"] and peer["median_step_s"]:
            ratios[workload] = mine["median_step_s"] / peer["median_step_s"]
    return ratios


def _mib(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def _fmt(value, spec, suffix="") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def markdown(rows: list[dict]) -> str:
    lines = ["| workload | config | median step s (min) quiet/all steps | predicted s (error) | tokens/s | "
             "speedup vs baseline | MPI wait s, per rank | "
             "activation MiB/rank: saved for backward (% of baseline); peak RSS Δ | target | exact? (loss rel. diff) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        exact = "—" if r["exact"] is None else f"{'yes' if r['exact'] else 'NO'} ({r['loss_rel_diff']:.1e})"
        if r["exact"] is not None and r.get("rtol", RTOL) != RTOL:
            exact += f", bound {r['rtol']:.0e}"   # reduced precision: within its bound, not bit-for-bit
        memory = _mib(r["saved_mib"])
        if r["memory_vs_1_rank"] is not None and not r["baseline"]:
            memory += f" ({100 * r['memory_vs_1_rank']:.0f}%)"
        memory += "; —" if r["rss_mib"] is None else f"; {_mib(r['rss_mib'])}"
        step = "—" if r["median_step_s"] is None else f"{r['median_step_s']:.3f} ({r['min_step_s']:.3f}) {r['quiet']}"
        waits = " / ".join(f"{w:.3f}" for w in r["mpi_wait_s"]) if r["median_step_s"] and len(r["mpi_wait_s"]) > 1 else "—"
        speed = "baseline" if r["baseline"] else _fmt(r["speedup"], ".2f", "×")
        if r.get("speedup_same_precision"):
            speed += f" ({r['speedup_same_precision']:.2f}× over 1 rank {r['precision']})"
        if r.get("bound"):
            speed += f" (bound {r['bound']:.2f}×: {100 * r['bound_share']:.0f}%)"
        elif r.get("model_bound"):
            speed += f" (model's bound {r['model_bound']:.2f}×: {100 * r['model_share']:.0f}%)"
        if r.get("state_vs_1_rank") is not None and not r["baseline"]:
            speed += f"; params + Adam {_mib(r['state_mib'])} MiB/rank ({100 * r['state_vs_1_rank']:.0f}%)"
        target = r["target"] + ("" if r["target_met"] is None else (": met" if r["target_met"] else ": **missed**"))
        predicted = "—" if r["predicted_step_s"] is None else \
            f"{r['predicted_step_s']:.3f} ({100 * r['prediction_error']:+.0f}%)"
        lines.append(f"| {r['workload']} | {r['config']} | {step} | {predicted} | {_fmt(r['tokens_per_s'], '.0f')} | {speed} | "
                     f"{waits} | {memory} | {target} | {exact} |")
    return "\n".join(lines)


def machine() -> dict:
    from importlib.metadata import version

    from mpirnn.host import cpu_flags, cpu_model, native_bf16
    simd = sorted(flag for flag in cpu_flags() if flag.startswith(("avx", "amx", "fma")))
    return {"host": platform.node(), "cpu": cpu_model(), "cpu_flags": simd, "native_bf16": native_bf16(),
            "cores": os.cpu_count(), "torch": version("torch"),
            "python": platform.python_version(), "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def summary_lines(rows: list[dict]) -> list[str]:
    """The DDP ratio, the model's microbatch choice against fixed counts, and how the model's predictions
    compare, one line each."""
    from mpirnn.tools.bench_predictions import prediction_summary
    lines = []
    for workload, ratio in ddp_ratios(rows).items():
        verdict = "met" if ratio <= DDP_TARGET else "missed"
        lines.append(f"{workload}: mpirnn dp=2 / PyTorch DDP dp=2 step time = {ratio:.3f} "
                     f"(target ≤ {DDP_TARGET}: {verdict})")
    from mpirnn.tools.count_sweep import sweep_lines
    return lines + sweep_lines(rows) + prediction_summary(rows, PREDICTION_TOLERANCE)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        from mpirnn.distributed.launch import run_guarded
        return run_guarded(lambda _argv: worker(args))
    runs = plan(args)
    meta = {"command": "python -m mpirnn.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "malloc": args.malloc,
            **machine()}
    from mpirnn.tools.bench_predictions import calibration_for
    cal = calibration_for(args, [shape_of(w, args.tiny) for w in {r["workload"] for r in runs}])
    meta["calibration"] = cal.path if cal else None
    reduced = [r for r in runs if r["precision"] != "float32"]
    cals = {"float32": cal}
    if reduced:   # the bf16 rows are chosen and predicted from a calibration measured in bf16
        cals["bf16"] = calibration_for(args, [shape_of(w, args.tiny) for w in {r["workload"] for r in reduced}], "bf16")
        meta["calibration_bf16"] = cals["bf16"].path if cals["bf16"] else None
    runs = choose_modelled_counts(runs, cals)
    results, errors, meta["load_per_pass"] = [], [], []
    with tempfile.TemporaryDirectory(prefix="mpirnn-bench-") as workdir:
        groups = launches(runs)
        for rep in range(1 if args.tiny else args.repeat):
            meta["load_per_pass"].append([round(x, 2) for x in os.getloadavg()])
            if args.tiny:  # the numbers mean nothing: run the launches at once, for a quick smoke test
                launched = [start(group, Path(workdir), f"{i}", args.malloc) for i, group in enumerate(groups)]
                finished = [finish(one, timeout=300) for one in launched]
            else:  # one at a time: the timings must not share the cores
                finished = [finish(start(group, Path(workdir), f"{rep}-{i}", args.malloc), timeout=900)
                            for i, group in enumerate(groups)]
            for done, error in finished:
                results += done
                errors += [error] if error else []
    results = pool(results)
    for r in results:
        shape = shape_of(r["workload"], r["tiny"])
        r["tokens_per_step"] = shape["batch"] * shape["seq_len"]
        r["malloc"] = args.malloc   # the model predicts page faults only under glibc's default allocator
    rows = [row for w in WORKLOADS for row in rows_for(w, results, cals)]
    meta["ddp_ratio"] = ddp_ratios(rows)
    meta["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["memory_method"] = results[0]["memory_method"] if results else None
    table = markdown(rows)
    print(table)
    print("\n" + "\n".join(summary_lines(rows)))
    print(f"\nmalloc: {args.malloc}; {len(meta['load_per_pass'])} pass(es); load average (1, 5, 15 min) at the start of "
          f"each pass {meta['load_per_pass']}, at the end {meta['load_avg_end']}; {meta['cores']} cores; {meta['cpu']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "runs": results, "errors": errors,
                               "shapes": {w: shape_of(w, args.tiny) for w in WORKLOADS}}, indent=1))
    print(f"results in {out}")
    for error in errors:
        print(f"mpirnn.bench: error: {error}", file=sys.stderr)
    return 1 if errors else 0

