"""Fault injection for the reliability tests, driven by one environment variable.

    MPIRNN_FAULT="raise:rank=1:step=3"   # rank 1 raises at the start of step 3
    MPIRNN_FAULT="hang:rank=0:step=2"    # rank 0 sleeps forever (a hung peer; see train.comm_timeout_s)
    MPIRNN_FAULT="nan:rank=1:step=2"     # a bad batch on rank 1 only: NaN (series) or ids past any vocabulary (tokens)
    MPIRNN_FAULT="slow-checkpoint:seconds=5"  # checkpoint writes pause half-way (to kill a job mid-write)
    MPIRNN_FAULT="hang-after-training:rank=1"  # rank 1 hangs once training is done, before the sample

Unset (the normal case) it costs one dictionary lookup per step.
"""

from __future__ import annotations

import os
import time


def _parse(text: str) -> tuple[str, dict]:
    kind, *fields = text.split(":")
    return kind, {k: float(v) for k, v in (f.split("=", 1) for f in fields)}


FAULT = _parse(os.environ["MPIRNN_FAULT"]) if os.environ.get("MPIRNN_FAULT") else None


class InjectedFault(RuntimeError):
    """Raised by `raise:` faults: stands for any bug or fault on one rank."""


def _due(kind: str, rank: int, step: int) -> bool:
    if FAULT is None or FAULT[0] != kind:
        return False
    where = FAULT[1]
    return where.get("rank", rank) == rank and where.get("step", step) == step


def at_step(rank: int, step: int) -> None:
    """Called at the start of each step (1-based)."""
    if _due("raise", rank, step):
        raise InjectedFault(f"injected fault at step {step} (MPIRNN_FAULT)")
    if _due("hang", rank, step):
        while True:
            time.sleep(3600)


def after_training(rank: int) -> None:
    """Called on every rank after the last step, in the phase that prints the sample."""
    if _due("hang-after-training", rank, -1):
        while True:
            time.sleep(3600)


def corrupt_batch(rank: int, step: int, block):
    """A rank's batch block (inputs and targets) as read from disk, spoiled when a `nan:` fault is due."""
    if not _due("nan", rank, step):
        return block
    if block.is_floating_point():
        return block * float("nan")
    return block + 1_000_000


def checkpoint_pause() -> None:
    if FAULT is not None and FAULT[0] == "slow-checkpoint":
        time.sleep(FAULT[1].get("seconds", 5.0))
