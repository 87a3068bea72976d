"""What the side-by-side benchmarks W6 and W7 (bench_bidirectional.py, bench_lengths.py) share:
their options, starting one run's MPI worker processes and running the rows interleaved, a
worker's model and the timing of its steps, the calibration for the predicted column, the
exactness check of a run's losses against the 1-rank run's, and writing the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def launch(module: str, spec: dict, path: Path, env: dict | None = None) -> dict:
    """`mpirun -n spec["ranks"] python -m module --worker path` with one thread per rank; the
    worker's result, read from path's .result file. A failed run ends the benchmark with its output."""
    path.write_text(json.dumps(spec))
    mpirun = Path(sys.executable).with_name("mpirun")
    command = [str(mpirun) if mpirun.exists() else "mpirun", "-n", str(spec["ranks"]), sys.executable, "-m",
               module, "--worker", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise SystemExit(f"{module}: {spec['name']} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(path.with_suffix(".result").read_text())


def calibration(args, s: dict):
    """--calibration, else this CPU's newest float32 calibration for the shape's cell and hidden
    size, else one measured now (about 20 s), as the bench does; None with --tiny."""
    from mpirnn.host import cpu_model
    from mpirnn.perf import calibration as calibration_file
    if args.calibration:
        return calibration_file.load(args.calibration)
    if args.tiny:
        return None
    found = calibration_file.find_for_host(cpu_model(), s["cell"], s["hidden"])
    if found is None:
        from mpirnn.perf.calibrate import calibrate
        found = calibrate(cells=[s["cell"]], hidden=[s["hidden"]], say=lambda line: print(line, file=sys.stderr))
    return calibration_file.load(found)


def exact(run: dict, serial: dict) -> bool:
    """Every step's loss equals the 1-rank run's within float32's exactness contract."""
    return all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(run["losses"], serial["losses"]))


def parser_for(module: str, doc: str, steps: int, out: str) -> argparse.ArgumentParser:
    """`python -m module`'s parser, with the options both benchmarks take (add_arguments)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, steps=steps, out=out)
    return parser


def add_arguments(parser, steps: int, out: str) -> None:
    """The options both benchmarks take."""
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--repeat", type=int, default=1, help="run every row this many times, interleaved")
    parser.add_argument("--out", default=out)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (smoke test; the numbers mean nothing)")
    parser.add_argument("--calibration", help="performance-model calibration for the predicted column (default: "
                                              "this CPU's newest, else one measured first)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def run_as_worker(args, run_worker) -> bool:
    """With --worker (the driver's mpirun started this rank): run it, rank 0 writes the result."""
    if not args.worker:
        return False
    result = run_worker(json.loads(Path(args.worker).read_text()))
    if result is not None:
        Path(args.worker).with_suffix(".result").write_text(json.dumps(result))
    return True


def drive(args, module: str, run_worker, shape, runs: list[dict], launch, pooled_lists: tuple[str, ...],
          **spec) -> tuple | None:
    """A benchmark's main after parsing: None on a worker rank (--worker: run_worker ran, see
    run_as_worker); else (its shape, the calibration, the pooled runs) after every run of `runs`,
    interleaved, each started by `launch(spec, workdir)` with --steps, --tiny and `spec` added."""
    if run_as_worker(args, run_worker):
        return None
    s = shape(args.tiny)
    cal = calibration(args, s)
    pooled = run_interleaved(module, runs, args.repeat,
                             lambda run, workdir: launch({**run, "steps": args.steps, "tiny": args.tiny, **spec},
                                                         workdir),
                             pooled_lists)
    return s, cal, pooled


def run_interleaved(module: str, runs: list[dict], repeat: int, start, pooled_lists: tuple[str, ...]) -> list[dict]:
    """Every run `repeat` times, interleaved (a burst of load elsewhere spoils one share of each
    row); one record per run with the lists named in `pooled_lists` joined over the repeats.
    `start(spec, workdir)` launches one run and returns its worker's result."""
    pooled: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=f"{module.rsplit('.', 1)[-1]}-") as workdir:
        for _ in range(repeat):
            for spec in runs:
                print(f"{module}: {spec['name']}", file=sys.stderr, flush=True)
                got = start(spec, Path(workdir))
                first = pooled.setdefault(spec["name"], {**got, **{key: [] for key in pooled_lists}})
                for key in pooled_lists:
                    first[key] += got[key]
    return list(pooled.values())


def worker_model(s: dict, bidirectional: bool = False):
    """The workload's model as training builds it from its config: the shape's cell, hidden,
    layers and embed, its features in and one output per class."""
    from mpirnn.config import Config
    from mpirnn.models import build_model
    cfg = Config()
    for key in ("cell", "hidden", "layers", "embed"):
        setattr(cfg.model, key, s[key])
    cfg.model.bidirectional = bidirectional
    return build_model(cfg, features=s["features"], outputs=s["classes"])


def step_end(world, started: float, loss) -> tuple[float, float]:
    """Where a timed step (begun at `started`, after a barrier) has run its optimizer: its seconds,
    the slowest rank's (a step ends when its slowest rank does), and its loss summed over the ranks
    (each holds its share of the global batch's)."""
    seconds = time.perf_counter() - started   # first: the imports below are not the step's
    import numpy as np
    from mpi4py import MPI
    elapsed = np.array([seconds])
    world.Allreduce(MPI.IN_PLACE, elapsed, MPI.MAX)
    total = np.array([float(loss)])
    world.Allreduce(MPI.IN_PLACE, total, MPI.SUM)
    return float(elapsed[0]), float(total[0])


def write_results(out: str, record: dict) -> None:
    """The benchmark's record as JSON at out (its folder made where missing), saying where."""
    from mpirnn.host import cpu_model
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{cpu_model()}; results in {path}")
