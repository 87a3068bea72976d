"""Continuing a run from its newest checkpoint: which one, and with which settings.

A resumed run takes the model and data settings (and the seed, the stateful flag and the
run's folder) from the checkpoint when the user does not repeat them, and says so. A model
setting the user gives that differs from the checkpoint's is refused, naming the setting
("model.hidden = 512 here, 256 in the checkpoint"); a different data setting is allowed
with a warning (fine-tuning on other data is legitimate, but the losses will not continue
the earlier run's).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mpirnn.distributed.agreement import agree
from mpirnn.errors import CheckpointError
from mpirnn import checkpoint

# Settings that define what a checkpoint holds or which batches it continues with.
ADOPTED = ("model.", "data.path", "data.seq_len", "data.batch_size", "train.seed", "train.stateful",
           "output.run_name", "output.metrics")
# Of those, the ones a checkpoint cannot be used with when they differ (the parameter shapes).
MODEL = "model."


def newest_checkpoint(comms, directory: str) -> int | None:
    """The newest intact checkpoint's step (rank 0 looks, warning about broken ones), on every rank."""

    def look():
        if comms.rank != 0:
            return -1
        checkpoint.remove_stale_temporaries(directory)
        found = checkpoint.newest_valid(directory)
        return -1 if found is None else found

    step = np.array([agree(comms.world, look)], dtype=np.int64)
    comms.world.Bcast(step, root=0)
    return None if step[0] < 0 else int(step[0])


def saved_config(directory: str, step: int) -> dict:
    """The resolved config a checkpoint was written with (from its JSON)."""
    meta = json.loads((Path(directory) / f"ckpt-{step:08d}.json").read_text())
    return meta.get("config") or {}


def take_settings(cfg, saved: dict) -> tuple[list[str], list[str]]:
    """Adopt the checkpoint's settings the user did not give; returns (adopted, warnings).

    Raises CheckpointError for a model setting given that differs from the checkpoint's.
    """
    adopted, warnings = [], []
    for section, values in saved.items():
        if not isinstance(values, dict) or not hasattr(cfg, section):
            continue
        target = getattr(cfg, section)
        for key, old in values.items():
            name = f"{section}.{key}"
            if not name.startswith(ADOPTED) or not hasattr(target, key):
                continue
            here = getattr(target, key)
            if here == old:
                continue
            if name not in cfg.explicit:
                setattr(target, key, old)
                adopted.append(f"{name}={old!r}" if isinstance(old, str) else f"{name}={old}")
            elif name.startswith(MODEL):
                raise CheckpointError(
                    f"{name} = {here!r} here, {old!r} in the checkpoint: resume with the checkpoint's model "
                    f"settings (leave {name} out), or start a new run in another checkpoint.dir")
            elif not name.startswith("output."):
                warnings.append(f"{name} = {here!r} here, {old!r} in the checkpoint")
    return adopted, warnings
