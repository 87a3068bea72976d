"""Stop signals: SIGUSR1, SIGTERM and a first Ctrl-C (SIGINT) stop the run cleanly.

A handler only notes the signal; the ranks agree on it at the next step boundary, write one
checkpoint (with checkpoint.dir set) and exit 128 + signal (130 for Ctrl-C; 0 with a note in
$MPIRNN_STOP_FILE under slurm/job.sh, mpirnn/training/loop.py). A second Ctrl-C
means "now": it raises KeyboardInterrupt, which aborts the job at once (mpirun's hydra also
aborts on a second Ctrl-C by itself). Slurm's preemption notice is USR1 (slurm/job.sh).
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self):
        self.pending = 0  # the first stop signal this rank got
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self.pending == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.pending = self.pending or signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def name(signum: int) -> str:
    return signal.Signals(signum).name
