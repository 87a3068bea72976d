"""Prints where each MPI rank runs, one JSON line per rank; the Slurm tests parse it.

    srun --mpi=pmi2 python tests/slurm/hello_mpi.py [--fail-rank R]

With --fail-rank R, rank R fails after the report (a failing job for tests) while the others
block in a barrier that can never complete, so only the launcher can end them:
--fail-how exit: the process dies with status 1 without MPI_Finalize (a crash; srun's
  --kill-on-bad-exit must end the step). A plain sys.exit(1) would not do: mpi4py's
  MPI_Finalize at exit waits for the other ranks and the job would hang.
--fail-how raise: an uncaught exception; run under `python -m mpi4py` it becomes MPI_Abort.
"""

import argparse
import json
import os
import socket
import sys

from mpi4py import MPI


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--fail-how", choices=("exit", "raise"), default="exit")
    args = parser.parse_args()

    world = MPI.COMM_WORLD
    # The node-local rank the trainer binds GPUs with (docs/design.md, "Devices"), not a launcher variable.
    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    report = {
        "rank": world.Get_rank(),
        "size": world.Get_size(),
        "node": os.environ.get("SLURMD_NODENAME"),
        "slurm_localid": os.environ.get("SLURM_LOCALID"),
        "local_rank": local.Get_rank(),
        "local_size": local.Get_size(),
        "host": socket.gethostname(),
        "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK"),
    }
    local.Free()
    print("HELLO " + json.dumps(report, sort_keys=True), flush=True)
    if args.fail_rank is not None:
        if world.Get_rank() == args.fail_rank:
            print(f"rank {args.fail_rank}: failing on purpose ({args.fail_how})", file=sys.stderr, flush=True)
            if args.fail_how == "raise":
                raise RuntimeError(f"rank {args.fail_rank}: failing on purpose")
            os._exit(1)
        world.Barrier()  # never completes: the failed rank does not arrive
    return 0


if __name__ == "__main__":
    sys.exit(main())
