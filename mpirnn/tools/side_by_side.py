"""What the side-by-side benchmarks W6 and W7 (bench_bidirectional.py, bench_lengths.py) share:
their options, starting one run's MPI worker processes and running the rows interleaved, the
calibration for the predicted column, and the exactness check of a run's losses against the
1-rank run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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
