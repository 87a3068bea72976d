"""What the side-by-side benchmarks W6 and W7 (bench_bidirectional.py, bench_lengths.py) share:
starting one run's MPI worker processes, the calibration for the predicted column, and the
exactness check of a run's losses against the 1-rank run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
