"""Continuing a run from its newest checkpoint: which one, and with which settings.

A resumed run takes the model and data settings (and the seed, the stateful flag and the
run's folder) from the checkpoint when the user does not repeat them, and says so. A model
setting the user gives that differs from the checkpoint's is refused, naming the setting
("model.hidden = 512 here, 256 in the checkpoint"); a different data setting is allowed
with a warning (fine-tuning on other data is legitimate, but the losses will not continue
the earlier run's).

A resume continues the *same run* (its folder, its metrics file) only when it uses the
checkpoint.dir the run wrote and keeps its output.run_name. Resuming from a copied checkpoint
directory, or under another run name, is a *branch*: a new run folder and metrics file that
start after the checkpoint's step, so no run ever rewrites another run's metrics
(docs/checkpoints.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mpirnn.distributed.agreement import agree
from mpirnn.errors import CheckpointError
from mpirnn import checkpoint

# Settings that define what a checkpoint holds or which batches it continues with.
ADOPTED = ("model.", "data.path", "data.seq_len", "data.batch_size", "data.windows", "train.seed", "train.stateful",
           "train.horizon", "train.loss", "train.quantiles", "output.run_name", "output.metrics")
# Of those, the ones a checkpoint cannot be used with when they differ (the parameter shapes: the
# series head's width follows train.horizon, train.loss and train.quantiles).
MODEL = ("model.", "train.horizon", "train.loss", "train.quantiles")


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


def _resolved(path: str) -> Path:
    return Path(path).expanduser().resolve()


def branch_of(cfg, saved: dict) -> str | None:
    """The saved run's name when this resume is a branch of it (another checkpoint.dir, or another
    output.run_name or output.metrics given), else None: the same run continues."""
    out, ckpt = saved.get("output") or {}, saved.get("checkpoint") or {}
    name = out.get("run_name", "")
    moved = not ckpt.get("dir") or _resolved(ckpt["dir"]) != _resolved(cfg.checkpoint.dir)
    renamed = "output.run_name" in cfg.explicit and cfg.output.run_name != name
    elsewhere = "output.metrics" in cfg.explicit and out.get("metrics") and \
        _resolved(cfg.output.metrics) != _resolved(out["metrics"])
    return (name or "(unnamed)") if moved or renamed or elsewhere else None


def _refuse_shared_metrics(cfg, saved: dict, original: str) -> None:
    """A branch that would write the original run's metrics file (its name or path given again)."""
    theirs = (saved.get("output") or {}).get("metrics")
    if "output.metrics" in cfg.explicit:
        ours = cfg.output.metrics
    elif "output.run_name" in cfg.explicit:
        ours = str(Path("runs") / cfg.output.run_name / "metrics.jsonl")
    else:
        return
    if theirs and _resolved(ours) == _resolved(theirs):
        raise CheckpointError(
            f"these checkpoints were copied from run {original} or are resumed under another name (a branch), and "
            f"this run would write that run's metrics file {theirs}: give the branch its own output.run_name (or "
            f"leave it out for a new one)")


def take_settings(cfg, saved: dict) -> tuple[list[str], list[str], str | None]:
    """Adopt the checkpoint's settings the user did not give; returns (adopted, warnings, the
    original run's name when this resume is a branch of it, else None).

    Raises CheckpointError for a model setting given that differs from the checkpoint's, and for
    a branch that would write into the original run's metrics file.
    """
    adopted, warnings = [], []
    original = branch_of(cfg, saved)
    if original is not None:
        _refuse_shared_metrics(cfg, saved, original)
    for section, values in saved.items():
        if not isinstance(values, dict) or not hasattr(cfg, section):
            continue
        target = getattr(cfg, section)
        for key, old in values.items():
            name = f"{section}.{key}"
            if not name.startswith(ADOPTED) or not hasattr(target, key):
                continue
            if original is not None and name.startswith("output."):
                continue  # a branch gets its own run folder and metrics
            here = getattr(target, key)
            if here == old:
                continue
            if name not in cfg.explicit:
                setattr(target, key, old)
                adopted.append(f"{name}={old!r}" if isinstance(old, str) else f"{name}={old}")
            elif name.startswith(MODEL):
                raise CheckpointError(
                    f"{name} = {here!r} here, {old!r} in the checkpoint: resume with the checkpoint's model "
                    f"and head settings (leave {name} out), or start a new run in another checkpoint.dir")
            elif not name.startswith("output."):
                warnings.append(f"{name} = {here!r} here, {old!r} in the checkpoint")
    return adopted, warnings, original
