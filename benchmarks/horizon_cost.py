"""What a multi-step head (train.horizon = H) and the quantile loss cost against a one-step step,
interleaved in one process on the benchmark's series workloads (docs/forecasting.md, "Cost").

    .venv/bin/mpirun -n 1 .venv/bin/python benchmarks/horizon_cost.py --workload W2 --pairs 8
    .venv/bin/mpirun -n 1 .venv/bin/python benchmarks/horizon_cost.py --workload W3 --pairs 8

Each variant is the benchmark's training step (mpirnn/tools/workloads.py build_step: the
StepRunner's forward, backward and gradient reduction, 1 thread) on one rank; the variants
run in turn, step by step, so a busy shared machine slows them alike. Prints each variant's
median step time and the median of its per-round ratios to the one-step step, in wall-clock
seconds and in the process's CPU seconds (1 thread: the compute the step costs, which other
processes competing for the cores change far less than they change the wall clock).
"""

import argparse
import statistics
import sys
import time

import torch
from mpi4py import MPI

from mpirnn.distributed.device import keep_freed_memory
from mpirnn.distributed.mesh import Comms
from mpirnn.grid import Grid
from mpirnn.tools.shapes import shape_of
from mpirnn.tools.workloads import build_step

QUANTILES = (0.1, 0.5, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W2", help="a series workload: W2 (lstm) or W3 (mingru)")
    parser.add_argument("--horizon", type=int, default=0, help="steps ahead (default: seq_len / 4)")
    parser.add_argument("--seq-len", type=int, default=0, help="a shorter sequence than the workload's")
    parser.add_argument("--pairs", type=int, default=8, help="timed rounds of every variant")
    args = parser.parse_args()

    keep_freed_memory()
    torch.set_num_threads(1)
    world = MPI.COMM_WORLD
    comms = Comms.create(Grid(world.size, dp=1, sp=world.size), world)
    shape = shape_of(args.workload, False)
    if args.seq_len:
        shape["seq_len"] = args.seq_len
    horizon = args.horizon or shape["seq_len"] // 4
    variants = {"one step": {}, f"horizon {horizon}": {"horizon": horizon}, "quantiles": {"quantiles": QUANTILES},
                f"horizon {horizon} + quantiles": {"horizon": horizon, "quantiles": QUANTILES}}
    steps = {}
    import mpirnn.tools.workloads as workloads
    workloads.shape_of = lambda workload, tiny: dict(shape)   # the (possibly shortened) shape for build_step
    for name, extra in variants.items():
        spec = dict(workload=args.workload, tiny=False, microbatches=0, dp=1, sp=world.size, threads=1,
                    device="cpu", **extra)
        model, step, _ = build_step(spec, comms, torch.device("cpu"))
        steps[name] = (model, step, torch.optim.Adam(model.parameters(), lr=1e-3))

    def timed(name):
        model, step, optimizer = steps[name]
        optimizer.zero_grad(set_to_none=True)
        world.Barrier()
        started, cpu = time.perf_counter(), time.process_time()
        step()
        optimizer.step()
        return (world.allreduce(time.perf_counter() - started, op=MPI.MAX),
                world.allreduce(time.process_time() - cpu, op=MPI.MAX))

    for name in steps:   # warm-up
        timed(name)
    times = {name: [] for name in steps}
    for round_ in range(args.pairs):
        order = list(steps) if round_ % 2 == 0 else list(reversed(steps))
        for name in order:
            times[name].append(timed(name))
    if world.rank == 0:
        print(f"{args.workload} ({shape['cell']} {shape['hidden']}, batch {shape['batch']}, seq_len {shape['seq_len']}), "
              f"{world.size} rank(s) x 1 thread, {args.pairs} rounds:")
        for name, pairs in times.items():
            line = f"  {name:<28}"
            for kind, index in (("wall", 0), ("cpu", 1)):
                seconds = [p[index] for p in pairs]
                base = [p[index] for p in times["one step"]]
                ratio = statistics.median(s / b for s, b in zip(seconds, base))
                line += f"  {kind} median {statistics.median(seconds):.4f} s, ratio {ratio:.3f}"
            print(line)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
