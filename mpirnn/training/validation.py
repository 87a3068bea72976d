"""Held-out loss during training (train.eval_every, train.eval_batches) and the best step so far.

The val split's windows are scored in order from zero states, forward only through the same
parallel paths as training (mpirnn/inference/scoring.py), so `val_loss` is the mean over
every val value scored, the same number on any grid, in the training loss's unit. Scoring
touches no training state (no graphs, no carried states, no random numbers): a run with
evaluation has the same training losses as one without, and resumes exactly.

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_evaluation.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mpirnn.data.loader import EvaluationLoader
from mpirnn.data.model_inputs import resolve_inputs
from mpirnn.data.manifest import load_manifest
from mpirnn.data.validate import validate_dataset
from mpirnn.errors import DataError
from mpirnn.inference.scoring import SplitScorer


def open_val_split(cfg, world):
    """The val split of data.path, checked like the train split (each rank a share of its shards).

    Refuses (on every rank, when run inside `agree`) a dataset without a val split, or one too
    short for a single sequence of data.seq_len, before any compute.
    """
    try:
        manifest = load_manifest(cfg.data.path, split="val")
    except DataError as exc:
        if "has no 'val' split" not in str(exc):
            raise
        raise DataError(f"train.eval_every = {cfg.train.eval_every} needs a val split, and {cfg.data.path} has "
                        f"none: prepare the data with --val-fraction F (e.g. 0.1), or set train.eval_every = 0") from None
    validate_dataset(manifest, part=world.rank, parts=world.size, scan_values=cfg.data.validate)
    return manifest


class Validator:
    """When to evaluate, the val loss, and the best step (lowest val_loss) of the run."""

    def __init__(self, cfg, comms, plan, model, manifest, device):
        self.every, self.limit, self.last = cfg.train.eval_every, cfg.train.eval_batches, cfg.train.steps
        self.loader = EvaluationLoader(manifest, cfg.data.seq_len, cfg.data.batch_size, device,
                                       getattr(torch, cfg.model.dtype), resolve_inputs(manifest, cfg))
        self.scorer = SplitScorer(cfg, comms, plan, model, self.loader)
        self.best_loss: float | None = None
        self.best_step: int | None = None

    @property
    def batch_count(self) -> int:
        """Batches one evaluation scores (what the watchdog allows it time for)."""
        return len(self.loader.batches(self.limit))

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def evaluate(self, step: int) -> tuple[float, bool]:
        """(val_loss at `step`, whether it is the best so far); every rank must call it."""
        loss = self.scorer.score(self.limit).loss
        better = self.best_loss is None or loss < self.best_loss
        if better:
            self.best_loss, self.best_step = loss, step
        return loss, better

    def recall_best(self, directory: str, steps: list[int]) -> None:
        """After a resume: the best val_loss recorded in this run's checkpoints (their JSON)."""
        for step in steps:
            loss = checkpoint_val_loss(directory, step)
            if loss is not None and (self.best_loss is None or loss < self.best_loss):
                self.best_loss, self.best_step = loss, step

    def close(self) -> None:
        self.scorer.close()
        self.loader.close()


def checkpoint_val_loss(directory: str, step: int) -> float | None:
    """The val_loss a checkpoint's JSON records (None: not evaluated at that step, or unreadable)."""
    try:
        meta = json.loads((Path(directory) / f"ckpt-{step:08d}.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("val_loss")
