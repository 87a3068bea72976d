"""Errors agreed by every rank, so that one cause is reported once and nobody hangs.

Light on purpose (mpi4py and numpy only): the entry point agrees on the config before
it imports torch, so a typo in a config is reported in well under a second.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpirnn.errors import UsageError, one_line

MESSAGE_BYTES = 1024


class AgreedError(UsageError):
    """An error every rank knows about (raised on all ranks at once), so no one aborts."""

    def __init__(self, message: str, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status  # the failing rank's error's (bad input data exits 2)


def agree(comm: MPI.Comm, action, *args, **kwargs):
    """Run `action` on every rank; if it raises a UsageError anywhere, raise the same AgreedError everywhere.

    The cause reported is the lowest failing rank's, so all ranks (and the one line the
    user sees) name the same problem. Other exceptions propagate (and abort the job).
    """
    message = None
    result = None
    status = 1
    try:
        result = action(*args, **kwargs)
    except UsageError as exc:
        message, status = one_line(exc), exc.exit_status
    failed = np.array([comm.rank if message is not None else comm.size], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, failed, MPI.MIN)
    first = int(failed[0])
    if first == comm.size:
        return result
    text = np.zeros(MESSAGE_BYTES + 1, dtype=np.uint8)   # the message, then its exit status
    if comm.rank == first:
        raw = message.encode("utf-8", "replace")[:MESSAGE_BYTES]
        text[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        text[MESSAGE_BYTES] = status
    comm.Bcast(text, root=first)
    raise AgreedError(bytes(text[:MESSAGE_BYTES]).rstrip(b"\0").decode("utf-8", "replace"), int(text[MESSAGE_BYTES]))
