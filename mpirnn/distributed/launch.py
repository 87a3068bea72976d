"""Running an entry point so that no failure leaves a rank hanging.

- An error every rank agreed on (AgreedError: bad config or data found collectively):
  rank 0 prints one line, every rank exits 1 normally (2 for bad input data, DataMismatchError).
- Any other exception on any rank: that rank prints one line naming itself, then
  MPI_Abort ends the whole job at once (the peers may be blocked in a collective).
- Usage errors, --help and --version (RankZeroParser): printed once, by rank 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mpirnn.errors import UsageError, one_line

EXIT_FAILURE = 1
ABORT_GRACE_S = 0.5   # between a failing rank's one line and its MPI_Abort (see run_guarded)


class RankZeroParser(argparse.ArgumentParser):
    """Usage, errors, --help and --version printed by rank 0 only; every rank still exits
    (status 2 on an error), so `mpirun -n 4` shows one message, not four."""

    def _print_message(self, message, file=None):  # argparse's one funnel for all of those texts
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            super()._print_message(message, file)


def _say(text: str) -> None:
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


def run_guarded(main, argv=None) -> int:
    from mpi4py import MPI

    from mpirnn.distributed.agreement import AgreedError

    world = MPI.COMM_WORLD
    rank, size = world.rank, world.size
    try:
        return main(argv) or 0
    except AgreedError as exc:
        if rank == 0:
            _say(f"mpirnn: error: {one_line(exc)}")
        return exc.exit_status
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - anything else must end every rank, not hang them
        where = f"rank {rank} of {size}" if size > 1 else "error"
        if isinstance(exc, UsageError):
            _say(f"mpirnn: {where}: {one_line(exc)}")
        elif isinstance(exc, KeyboardInterrupt):
            _say(f"mpirnn: {where}: interrupted")
        else:
            _say(f"mpirnn: {where}: {one_line(exc)} (a bug or a fault: rerun with MPIRNN_TRACEBACK=1 for the traceback)")
            if os.environ.get("MPIRNN_TRACEBACK"):
                import traceback
                traceback.print_exc()
        if size > 1:
            # The launcher forwards each rank's stderr through a pipe of its own, and MPI_Abort's
            # kill can overtake the line just written there (MPICH's Hydra under load lost it in CI).
            # A brief pause lets the forwarder read it; a failing job ends a fraction of a second later.
            time.sleep(ABORT_GRACE_S)
            world.Abort(EXIT_FAILURE)
        return EXIT_FAILURE
