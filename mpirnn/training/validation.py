"""Held-out loss during training (train.eval_every, train.eval_batches) and the best step so far.

The val split's windows are scored in order from zero states, forward only through the same
parallel paths as training (mpirnn/inference/scoring.py), so `val_loss` is the mean over
every val value scored, the same number on any grid, in the training loss's unit. Scoring
touches no training state (no graphs, no carried states, no random numbers): a run with
evaluation has the same training losses as one without, and resumes exactly. `val_loss` is the
plain mean cross-entropy even where train.class_weights weights the training loss; then
`val_loss_weighted` gives the weighted one as well (docs/tasks.md, "Class weights"). Tasks with classes
also get `val_accuracy` and `val_macro_f1`; `checkpoint.best_metric` names the one that
chooses the best step (lowest val_loss, or highest accuracy / macro-F1), recorded in every
checkpoint's JSON so `--best` and a resumed run choose by the same measure.

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_evaluation.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mpirnn.data.labelled_loader import evaluation_loader
from mpirnn.data.model_inputs import resolve_inputs
from mpirnn.data.manifest import load_manifest
from mpirnn.data.validate import validate_dataset
from mpirnn.errors import ConfigError, DataError
from mpirnn.inference.load import HIGHER_IS_BETTER
from mpirnn.inference.scoring import SplitScorer


def check_best_metric(cfg, spec) -> None:
    """Refuse (before compute) a best metric the task does not have."""
    metric = cfg.checkpoint.best_metric
    if metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"checkpoint.best_metric = {metric!r}: expected one of {', '.join(HIGHER_IS_BETTER)}")
    if metric != "val_loss" and not spec.classes:
        raise ConfigError(f"checkpoint.best_metric = {metric!r} needs a task with classes (tag or classify), but "
                          f"{cfg.data.path} holds task {spec.task!r}: use checkpoint.best_metric = \"val_loss\"")


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

    def __init__(self, cfg, comms, plan, model, manifest, device, weights=None):
        """`weights`: a labelled task's class weights (as in training), or None."""
        self.every, self.limit, self.last = cfg.train.eval_every, cfg.train.eval_batches, cfg.train.steps
        # The loader's loss is unweighted (val_loss); the scorer adds the weighted one.
        self.loader = evaluation_loader(manifest, cfg.data.seq_len, cfg.data.batch_size, device,
                                        getattr(torch, cfg.model.dtype), None, resolve_inputs(manifest, cfg),
                                        cfg.train.horizon)
        spec = manifest.task_spec
        self.weighted = weights is not None
        self.scorer = SplitScorer(cfg, comms, plan, model, self.loader, spec=spec if spec.classes else None,
                                  weights=weights)
        self.metric = cfg.checkpoint.best_metric
        self.best_value: float | None = None   # of self.metric, at best_step
        self.best_loss: float | None = None    # val_loss at best_step
        self.best_step: int | None = None

    @property
    def batch_count(self) -> int:
        """Batches one evaluation scores (what the watchdog allows it time for)."""
        return len(self.loader.batches(self.limit))

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def evaluate(self, step: int) -> tuple[dict, bool]:
        """({val_loss, and val_accuracy, val_macro_f1 for classes} at `step`, whether it is the
        best so far by checkpoint.best_metric); every rank must call it."""
        score = self.scorer.score(self.limit)
        values = {"val_loss": score.loss}
        if score.metrics is not None:
            values.update(val_accuracy=score.metrics["accuracy"], val_macro_f1=score.metrics["macro_f1"])
        if self.weighted:
            values["val_loss_weighted"] = score.weighted_loss
        better = self._better(values.get(self.metric))
        if better:
            self.best_value, self.best_loss, self.best_step = values[self.metric], score.loss, step
        return values, better

    def _better(self, value) -> bool:
        if value is None:
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if HIGHER_IS_BETTER[self.metric] else value < self.best_value

    def recall_best(self, directory: str, steps: list[int]) -> None:
        """After a resume: the best value of checkpoint.best_metric recorded in this run's checkpoints."""
        for step in steps:
            meta = checkpoint_meta(directory, step)
            if self._better(meta.get(self.metric)):
                self.best_value, self.best_loss, self.best_step = meta[self.metric], meta.get("val_loss"), step

    def close(self) -> None:
        self.scorer.close()
        self.loader.close()


def checkpoint_meta(directory: str, step: int) -> dict:
    """A checkpoint's JSON (val_loss etc. when evaluated at that step); {} when unreadable."""
    try:
        return json.loads((Path(directory) / f"ckpt-{step:08d}.json").read_text())
    except (OSError, ValueError):
        return {}
