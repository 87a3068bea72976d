"""Where each rank runs: host, Slurm node, node-local rank, device — gathered for the metrics.

Written into the metrics summary so that a run on a cluster can be checked afterwards
(rank → node mapping, GPU binding, threads and CPU model, which `mpirnn.report` uses to
predict the run's step time). Records travel as fixed-size JSON bytes through a
buffer Allgather (no pickle of received data).
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import torch

from mpirnn.host import cpu_model

RECORD_BYTES = 1024


def this_rank(comms, device) -> dict:
    return {"rank": comms.rank, "host": socket.gethostname(),
            "slurm_node": os.environ.get("SLURMD_NODENAME"),
            "slurm_localid": _int(os.environ.get("SLURM_LOCALID")),
            "local_rank": comms.local_rank, "local_size": comms.local_size,
            "device": str(device), "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "coords": comms.coords}


def gather(comms, record: dict) -> list[dict]:
    raw = json.dumps(record).encode()[:RECORD_BYTES]
    mine = np.zeros(RECORD_BYTES, dtype=np.uint8)
    mine[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    every = np.zeros((comms.world.size, RECORD_BYTES), dtype=np.uint8)
    comms.world.Allgather(mine, every)
    return [json.loads(bytes(row).rstrip(b"\0")) for row in every]


def _int(text):
    return int(text) if text and text.isdigit() else None
