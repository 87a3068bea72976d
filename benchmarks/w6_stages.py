"""Where W6's time goes on each rank: compute by kind and MPI waits, from the run's tracer.

    mpirun -n 1 .venv/bin/python benchmarks/w6_stages.py 1 1 1          # 1 rank
    mpirun -n 2 .venv/bin/python benchmarks/w6_stages.py 1 2 4          # pp=2, M=4
    mpirun -n 2 .venv/bin/python benchmarks/w6_stages.py 2 1 1          # sp=2
    (arguments: sp pp microbatches [T, default 4096]; KEEP_MEMORY's MALLOC_* settings are
    already training's, mpirnn/distributed/device.py `keep_freed_memory`)

W6 (mpirnn/tools/bench_bidirectional.py): a BiLSTM tagger, 2 layers x 128 per direction, 40
features projected to 64, 10 classes per step, batch 16. Builds the step as the bench does,
turns the tracer on (mpirnn/distributed/trace.py), and prints each rank's median step and the
last step's compute by kind and waits by what they wait for (mpirnn/tools/pipeline_trace.py's
breakdown). A pipeline's step can be no shorter than its busiest stage's compute: at pp=2 the
stage holding layer 1 (it reads 256 inputs where layer 0 reads 64) and the head carried about
two thirds of the work until the plan moved some of its reverse directions to the first stage
(docs/performance.md, "W6").
"""

import json
import statistics
import sys
import time

import torch
from mpi4py import MPI

from mpirnn.distributed.device import flush_denormals, keep_freed_memory
from mpirnn.distributed.mesh import Comms
from mpirnn.distributed.trace import Tracer
from mpirnn.grid import Grid
from mpirnn.tools.bench_bidirectional import W6, build_step
from mpirnn.tools.pipeline_trace import breakdown, nested_free


def main(sp: int, pp: int, microbatches: int, steps: int = 4096) -> None:
    torch.set_num_threads(1)
    flush_denormals()
    keep_freed_memory()
    world = MPI.COMM_WORLD
    s = dict(W6, seq_len=steps)
    comms = Comms.create(Grid(world.size, sp=sp, pp=pp), world)
    comms.timer.tracer = tracer = Tracer(comms.rank, enabled=True)
    step = build_step(s, comms, microbatches)   # the bench's own step (mpirnn/tools/bench_bidirectional.py)
    model, plan, runner, optimizer = step.model, step.plan, step.runner, step.optimizer
    walls, parts = [], None
    for index in range(4):   # one warm-up step, three timed
        state = model.zero_state(plan.local_rows, step.inputs, range(*plan.layers))
        optimizer.zero_grad(set_to_none=True)
        world.Barrier()
        tracer.events.clear()
        started = time.perf_counter()
        runner(step.local_inputs, step.targets, state, step.norm)
        optimizer.step()
        wall = time.perf_counter() - started
        world.Barrier()
        if index:
            walls.append(wall)
            parts = breakdown(nested_free(tracer.events), 0, float("inf"))
    runner.reducer.remove()
    mine = {"rank": world.rank, "median step s": round(statistics.median(walls), 3),
            "compute s": {k: round(v, 3) for k, v in parts["compute"].items()},
            "compute total s": round(sum(parts["compute"].values()), 3),
            "waits s": {k: round(v, 3) for k, v in parts["wait"].items()}}
    comms.free()
    for rank in range(world.size):
        if rank == world.rank:
            print(json.dumps(mine), flush=True)
        world.Barrier()


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
