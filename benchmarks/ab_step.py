"""A training step's time with this tree's executor against an earlier commit's, interleaved in one run.

    mpirun -n 2 .venv/bin/python benchmarks/ab_step.py --rev 47e3030 --module wavefront --workload W1 -M 4
    mpirun -n 2 .venv/bin/python benchmarks/ab_step.py --rev 47e3030 --module linear_scan --workload W3
    mpirun -n 2 .venv/bin/python benchmarks/ab_step.py --rev 135c568 --module tensor --workload W4

On a shared machine two runs minutes apart differ by 10-30%, so a change to the step is
judged by alternating its old and new versions step by step in the same processes. The
old module is read from `git show REV:mpirnn/parallel/MODULE.py` and swapped in for one
step at a time: `wavefront` swaps the executor (mpirnn/parallel/wavefront.py), `linear_scan`
the cross-rank scan (mpirnn/parallel/linear_scan.py), `tensor` the tp group whose exchanges
every sharded layer calls (mpirnn/parallel/tensor.py's TensorGroup, on a tp grid of all ranks).
Everything else is this tree's.
The workload's step is the benchmark's (mpirnn/tools/workloads.py, 1 thread per rank) on an
sp grid of all ranks (or pp with --pp), with plain SGD at lr 0 so that every step is the
same step. Prints the medians and the median of the per-pair ratios; checks both give
the same loss.
"""

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mpi4py import MPI

from mpirnn.distributed.device import keep_freed_memory
from mpirnn.distributed.mesh import Comms
from mpirnn.parallel import wavefront
from mpirnn.grid import Grid
from mpirnn.tools.workloads import build_step

ROOT = Path(__file__).resolve().parents[1]


def old_module(rev: str, module: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:mpirnn/parallel/{module}.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"old_{module}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"old_{module}", path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded   # dataclasses look their module up while the class is made
    spec.loader.exec_module(loaded)
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the commit to compare with")
    parser.add_argument("--module", choices=("wavefront", "linear_scan", "tensor"), required=True)
    parser.add_argument("--workload", default="W1")
    parser.add_argument("-M", "--microbatches", type=int, default=0, help="0: the planner's fixed rule")
    parser.add_argument("--pp", action="store_true", help="a pp grid (8 chunks) instead of sp")
    parser.add_argument("--pairs", type=int, default=12)
    args = parser.parse_args()

    keep_freed_memory()
    torch.set_num_threads(1)
    world = MPI.COMM_WORLD
    n = world.size
    axes = dict(sp=1, pp=n, chunks=8) if args.pp else dict(sp=n, pp=1, chunks=0)
    if args.module == "tensor":
        axes = dict(sp=1, pp=1, tp=n, chunks=0)
    spec = dict(workload=args.workload, tiny=False, microbatches=args.microbatches, dp=1, threads=1,
                device="cpu", **axes)
    comms = Comms.create(Grid(n, dp=1, sp=axes["sp"], pp=axes["pp"], tp=axes.get("tp", 1)), world)
    model, step, runner = build_step(spec, comms, torch.device("cpu"))
    old = old_module(args.rev, args.module)
    if args.module == "wavefront":
        executors = {"old": old.Wavefront(model, runner.plan, comms), "new": runner.wavefront}
        def use(name):
            runner.wavefront = executors[name]
    elif args.module == "tensor":
        layers = [m for m in model.modules() if hasattr(m, "group")]
        new_group = layers[0].group
        groups = {"old": old.TensorGroup(new_group.comm, new_group.width * new_group.size, comms.timer),
                  "new": new_group}
        def use(name):
            for layer in layers:
                layer.group = groups[name]
    else:
        scans = {"old": old.scan_layers, "new": wavefront.scan_layers}
        def use(name):
            wavefront.scan_layers = scans[name]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def timed(name):
        use(name)
        optimizer.zero_grad(set_to_none=True)
        world.Barrier()
        started = time.perf_counter()
        loss = float(step())
        optimizer.step()
        return world.allreduce(time.perf_counter() - started, op=MPI.MAX), loss

    step(prime=True)
    for _ in range(2):
        timed("old"), timed("new")
    times, losses = {"old": [], "new": []}, {"old": [], "new": []}
    for pair in range(args.pairs):
        for name in (("old", "new") if pair % 2 else ("new", "old")):
            seconds, loss = timed(name)
            times[name].append(seconds)
            losses[name].append(loss)
    if world.rank == 0:
        old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
        ratios = statistics.median(b / a for a, b in zip(times["old"], times["new"]))
        grid = f"pp={n}, C=8" if args.pp else f"sp={n}, M={args.microbatches or 'rule'}"
        grid = f"tp={n}" if args.module == "tensor" else grid
        print(f"{args.workload} {grid}, {args.module} at {args.rev} against this tree: "
              f"old {old_s:.4f} s, new {new_s:.4f} s, new/old {new_s / old_s:.3f}, "
              f"per-pair median {ratios:.3f}; same losses: {losses['old'] == losses['new']}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
