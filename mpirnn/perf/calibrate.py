"""Calibrate the performance model on this machine: `python -m mpirnn.plan --calibrate [--out FILE]`.

Runs the compute measurements (mpirnn/perf/compute_bench.py) in a fresh process with
one thread and the benchmark's allocator settings, and the MPI measurements
(mpirnn/perf/comm_bench.py) under `mpirun -n 2`; fits the intra-node link's α and β
to the point-to-point times and γ (adding up) to the allreduce times; and writes one JSON
file, by default into the user's calibration folder ($MPIRNN_CALIBRATION_DIR, else
~/.cache/mpirnn/calibration: mpirnn/perf/calibration.py). Links between nodes are not
measurable on one host: the file carries the documented NDR InfiniBand default
(mpirnn/perf/links.py). About 50 s in full on an idle 2-core machine; restricted to one
config's cell and hidden size (`python -m mpirnn.plan --calibrate --config X.toml`, and what
the planner does by itself on an uncalibrated CPU) about 20 s.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpirnn.perf import links
from mpirnn.host import cpu_model, native_bf16
from mpirnn.perf.calibration import CALIBRATED_HIDDEN, FORMAT, default_path, save
from mpirnn.perf.processes import KEEP_MEMORY, mpiexec


def fit_alpha_beta(points: list[list[float]]) -> tuple[float, float]:
    """α, β minimising the RELATIVE error of α + n·β over (n, t) points (small messages count as much as big)."""
    # Weighted least squares with weights 1/t²: solve the 2×2 normal equations.
    sw = swn = swnn = swt = swnt = 0.0
    for n, t in points:
        w = 1.0 / t**2
        sw, swn, swnn, swt, swnt = sw + w, swn + w * n, swnn + w * n * n, swt + w * t, swnt + w * n * t
    det = sw * swnn - swn**2
    beta = (sw * swnt - swn * swt) / det
    alpha = (swt - swn * beta) / sw
    if beta <= 0:   # noise: fall back to the largest message's bandwidth
        n, t = max(points)
        beta = t / n
    return max(alpha, 0.0), beta


def fit_gamma(link: links.Link, allreduce_points: list[list[float]]) -> float:
    """γ from allreduce at p = 2, where the model is 2α + n·β + n/2·γ, over messages ≥ 64 KiB."""
    big = [(n, t) for n, t in allreduce_points if n >= 65536] or allreduce_points
    excess = [(t - 2 * link.alpha_s - n * link.beta_s_per_byte) / (n / 2) for n, t in big]
    return max(0.0, sorted(excess)[len(excess) // 2])


def fit_errors(link: links.Link, measured: dict) -> dict:
    """Model / measured for every op and size: how well the α–β–γ formulas describe this machine."""
    return {op: [[n, round(links.COLLECTIVES[op](link, n, 2) / t, 3)] for n, t in points]
            for op, points in measured.items()}


def fit_links(comm: dict) -> tuple[links.Link, dict]:
    alpha, beta = fit_alpha_beta(comm["ops"]["p2p"])
    link = links.Link(alpha, beta, source=f"measured here: {comm['library']}, 2 ranks on one node")
    link = links.Link(alpha, beta, fit_gamma(link, comm["ops"]["allreduce"]), link.source)
    return link, fit_errors(link, comm["ops"])


def _run(command: list[str], env: dict, what: str) -> None:
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if done.returncode:
        tail = "\n".join(done.stdout.strip().splitlines()[-5:])
        raise SystemExit(f"mpirnn.plan: calibration ({what}) failed, exit {done.returncode}:\n{tail}")


# What a calibration took on the project's 2-core development machine when it was idle (the
# shipped calibrations record their compute time; docs/performance.md): the MPI measurements,
# the compute measurements every calibration makes once per pass, and one (cell, hidden) table,
# whose long runs grow with the weights (hidden²) past 512.
IDLE_COMM_S = 10.0
IDLE_FIXED_S = 2.5
IDLE_TABLE_S = 1.0
IDLE_TABLE_512_S = 1.5
IDLE_LONG_S = 5.0   # the long-sequence probe under glibc's default allocator, both passes
PASSES = 2


def expected_seconds(cells=None, hidden=None, busy: float | None = None) -> float:
    """Roughly how long `calibrate(cells=..., hidden=...)` takes here: the idle machine's time,
    stretched by the load average per core when other processes share the cores."""
    from mpirnn.perf.calibration import CALIBRATED_HIDDEN, GATES
    fused = [cell for cell in GATES if cells is None or cell in cells]
    tables = sum(IDLE_TABLE_S + IDLE_TABLE_512_S * (h / 512) ** 2 for h in (hidden or CALIBRATED_HIDDEN)) * len(fused)
    idle = IDLE_COMM_S + IDLE_LONG_S + PASSES * (IDLE_FIXED_S + tables)
    if busy is None:
        busy = os.getloadavg()[0] / (os.cpu_count() or 1)
    return idle * max(1.0, busy)


def what_is_measured(cells=None, hidden=None) -> str:
    """The calibration's scope in words: "every cell at hidden 64, 128, 256, 512", "lstm at hidden 32"."""
    from mpirnn.perf.calibration import CALIBRATED_HIDDEN
    sizes = ", ".join(map(str, hidden or CALIBRATED_HIDDEN))
    return f"{'every cell' if not cells else ', '.join(cells)} at hidden {sizes}"


def calibrate(out: str | Path | None = None, quick: bool = False, device: str = "cpu", cells=None,
              hidden=None, say=print, precision: str = "float32") -> Path:
    """Measure, fit and write a calibration file (by default into the user's calibration folder,
    mpirnn/perf/calibration.py `user_dir`); returns its path.

    cells, hidden: measure only these (a config's or a benchmark's); the file records them as its
    "scope", and the lookup uses it only for models of those cells at those sizes.
    quick: toy sizes whose numbers mean little, for the benchmark's --tiny smoke test only.
    precision: the compute is measured under train.precision's policy (float32 or bf16); runs
    plan with a calibration of their own precision (docs/precision.md, "The performance model").
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **KEEP_MEMORY}
    started = datetime.datetime.now().astimezone()
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="mpirnn-calibrate-") as work:
        compute_file, comm_file = Path(work) / "compute.json", Path(work) / "comm.json"
        extra = ["--quick"] if quick else []
        extra += ["--cells", ",".join(cells)] if cells else []
        extra += ["--hidden", ",".join(map(str, hidden))] if hidden else []
        what = ("toy sizes" if quick else what_is_measured(cells, hidden)) + (f", {precision}" if precision != "float32" else "")
        say(f"mpirnn.plan: calibrating: [1/2] compute on {device}, {what} ...")
        phase = time.perf_counter()
        _run([sys.executable, "-m", "mpirnn.perf.calibrate", "--worker", "compute", "--device", device,
              "--result", str(compute_file), "--precision", precision, *extra], env, "compute")
        say(f"mpirnn.plan: calibrating: [1/2] compute done in {time.perf_counter() - phase:.0f} s; "
            f"[2/2] communication (mpirun -n 2) ...")
        phase = time.perf_counter()
        _run([mpiexec(), "-n", "2", sys.executable, "-m", "mpirnn.perf.calibrate", "--worker", "comm",
              "--result", str(comm_file), *extra], env, "communication")
        say(f"mpirnn.plan: calibrating: [2/2] communication done in {time.perf_counter() - phase:.0f} s")
        compute, comm = json.loads(compute_file.read_text()), json.loads(comm_file.read_text())
        # The long-sequence probe, under glibc's default allocator (no KEEP_MEMORY: what a process that
        # does not keep freed memory pays, for layouts with malloc "default"); toy sizes
        # (quick) measure it in the compute worker, sparing the smoke test a process start.
        # A GPU's activations live in device memory, which glibc never hands out: no probe there.
        if compute["fused"] and "long_sequence" not in compute and device == "cpu":
            probe_file = Path(work) / "long.json"
            plain = {key: value for key, value in env.items() if key not in KEEP_MEMORY}
            probe = "lstm" if "lstm" in compute["fused"] else next(iter(compute["fused"]))
            say("mpirnn.plan: calibrating: long sequences under glibc's default allocator ...")
            _run([sys.executable, "-m", "mpirnn.perf.calibrate", "--worker", "long", "--device", device, "--cells",
                  probe, "--result", str(probe_file), *(["--quick"] if quick else [])], plain, "long sequences")
            compute["long_sequence"] = json.loads(probe_file.read_text())
    compute["slowdown"] = comm["slowdown"]
    intra, errors = fit_links(comm)
    from importlib.metadata import version
    cpu = cpu_model()
    # GPU messages are staged through the host only when MPI cannot read device memory.
    staging = links.staging(device, comm.get("cuda_aware", False))
    restricted = cells is not None or (hidden is not None and not set(CALIBRATED_HIDDEN) <= set(hidden))
    data = {
        "format": FORMAT,
        # The precision the compute was measured in; native_bf16: whether train.precision = bf16 runs here.
        "host": {"cpu": cpu, "cores": os.cpu_count(), "device": device, "threads_per_rank": 1,
                 "precision": precision, "native_bf16": native_bf16(), "cuda_aware_mpi": comm.get("cuda_aware", False),
                 "torch": version("torch"), "date": started.isoformat(timespec="seconds"),
                 "load_avg_start": load, "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "source": "python -m mpirnn.plan --calibrate" + (" (toy sizes: the numbers mean little)" if quick else ""),
        "scope": {"cells": sorted(cells or compute["fused"]), "hidden": sorted(hidden or CALIBRATED_HIDDEN)}
                 if restricted else None,
        "compute": compute,
        "links": {"intra": intra.to_dict(), "inter": links.NDR_INFINIBAND.to_dict(),
                  "staging": staging.to_dict() if staging else None},
        "async_progress": comm["async_progress"],
        "lockstep_sync_s": comm["lockstep_sync_s"],
        "comm_measured": comm["ops"],
        "comm_model_over_measured": errors,
    }
    path = save(data, out or default_path(cpu, device, started, precision))
    say(f"mpirnn.plan: calibration written to {path} ({(datetime.datetime.now().astimezone() - started).total_seconds():.0f} s)")
    return path


def worker(argv: list[str]) -> int:
    """`--worker compute|comm --result FILE [--quick] [--device D]`: one side of the measurement."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("compute", "comm", "long"))
    parser.add_argument("--result")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cells")
    parser.add_argument("--hidden")
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args(argv)
    if args.worker == "compute":
        import torch

        from mpirnn.distributed.device import flush_denormals
        from mpirnn.perf.compute_bench import measure
        torch.set_num_threads(1)
        flush_denormals()   # as training does
        result = measure(args.device, args.quick, cells=args.cells.split(",") if args.cells else None,
                         hidden=[int(h) for h in args.hidden.split(",")] if args.hidden else None,
                         precision=args.precision)
        if args.quick and result["fused"]:
            from mpirnn.perf.compute_bench import long_sequence
            result["long_sequence"] = long_sequence(args.device, True, "lstm" if "lstm" in result["fused"]
                                                    else next(iter(result["fused"])))
    elif args.worker == "long":
        import torch

        from mpirnn.distributed.device import flush_denormals
        from mpirnn.perf.compute_bench import long_sequence
        torch.set_num_threads(1)
        flush_denormals()
        result = long_sequence(args.device, args.quick, args.cells)
    else:
        from mpirnn.perf.comm_bench import measure
        result = measure(args.quick)
    if result is not None:
        Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
