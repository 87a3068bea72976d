"""Scoring a whole split on any grid: forward only, through the training step's parallel paths.

Every window of the split is scored once, in order (mpirnn/data/loader.py EvaluationLoader),
from zero initial states, in batches of data.batch_size sequences. Each rank runs its rows,
time segment and stage of each batch with `StepRunner.evaluate` (the same units, state and
activation exchanges as a training step, no graphs) and sums its share of the loss; one
Allreduce over the world at the end gives the loss over the split, the same number on any
grid. The last batch may have fewer rows than data.batch_size: it gets its own plan (rows
cut over dp again, possibly none for some data-parallel groups, which then sit it out).

Series also get the squared and absolute errors of the next-step predictions in data units
(the normalized error times each feature's std), from the last stage's outputs. Labelled tasks
get their task's metrics (accuracy, macro-F1, per class, confusion matrix; or RMSE/MAE in data
units) from a LabelledTally (mpirnn/inference/labelled_tally.py) fed by the same hook, and, for
`predict`, every prediction gathered to rank 0.

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_evaluation.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from mpi4py import MPI

from mpirnn.errors import ConfigError
from mpirnn.grid import rows_of
from mpirnn.inference.labelled_tally import LabelledTally, Predictions
from mpirnn.parallel.plan import Plan, resolve_chunks, resolve_microbatches
from mpirnn.parallel.step import StepRunner


@dataclass
class Score:
    loss: float                 # mean loss over every predicted value of the split
    elements: int               # how many values: sequences x seq_len x features
    sequences: int
    rmse: list | None = None    # series: per feature, in data units
    mae: list | None = None
    metrics: dict | None = None            # a labelled task's (mpirnn/inference/task_metrics.py)
    weighted_loss: float | None = None     # with class weights: the class-weighted mean cross-entropy
    weights: list | None = None            # those class weights (evaluate records them)
    predictions: Predictions | None = None  # predict: on rank 0, every scored element in split order


def evaluation_plan(base: Plan, cfg, batch_rows: int) -> Plan:
    """This rank's plan for one evaluation batch of `batch_rows` sequences.

    The run's plan (`base`: segment, layers, and whatever else the grid gives this rank) with
    the batch's rows cut over dp again (possibly none) and, where the batch is too small for
    the microbatches asked for, fewer of them, down to one: evaluation is exact whatever the
    microbatching, and a small held-out split must not be refused.
    """
    grid = base.grid
    rows = rows_of(batch_rows, grid, base.coords["dp"])
    local = rows[1] - rows[0]
    requested = min(cfg.parallel.microbatches, local)
    try:
        microbatches = resolve_microbatches(requested, max(local, 1), grid.sp, grid.pp, base.mode)
    except ConfigError:
        microbatches = 1
    microbatches = max(1, microbatches)
    chunks = resolve_chunks(cfg.parallel.chunks, cfg.data.seq_len // grid.sp, grid.pp, microbatches, base.mode)
    return replace(base.with_microbatches(microbatches, chunks), rows=rows)


class SplitScorer:
    """Scores one split with one (staged) model on this rank; reusable (validation every N steps).

    Made inside `agree`: the plans of both batch sizes (full and last) are made here, so a
    setting that cannot run (parallel.chunks longer than a segment) is refused on every rank.
    """

    def __init__(self, cfg, comms, plan, model, loader, normalization=None, spec=None, keep: bool = False,
                 weights=None):
        """`plan`: the run's plan on this rank; `model`: already cut to it (its stage); `spec`: a
        labelled task's TaskSpec (its metrics are computed; None: the loss only); `keep`: also
        gather every prediction to rank 0 (predict); `weights`: class weights, for the
        class-weighted loss beside the plain one (the loader's loss stays unweighted)."""
        self.cfg, self.comms, self.base, self.model, self.loader = cfg, comms, plan, model, loader
        self.spec, self.keep, self.weights = spec, keep, weights
        self.runners: dict[int, StepRunner] = {}
        self.labelled = model.outputs is not None  # a labelled task (docs/tasks.md)
        self.features = None if model.vocab_size or self.labelled else model.features
        scale = normalization.scale if normalization is not None else (1.0,) * (self.features or 0)
        self.scale = torch.tensor(scale, dtype=torch.float64)
        for rows in sorted({len(windows) for windows in loader.batches()}):
            self._runner(rows)

    def _runner(self, batch_rows: int) -> StepRunner:
        if batch_rows not in self.runners:
            plan = evaluation_plan(self.base, self.cfg, batch_rows)
            runner = StepRunner(self.model, plan, self.comms, self.cfg.train.bucket_mb)
            runner.reducer.remove()  # forward only: its gradient hooks must never fire in training
            self.runners[batch_rows] = runner
        return self.runners[batch_rows]

    def score(self, limit: int = 0) -> Score:
        """The loss (and, for series, RMSE/MAE) over the split (`limit` > 0: its first batches); every rank."""
        totals = np.zeros(1 + 2 * (self.features or 0), dtype=np.float64)
        sequences, labelled_elements = 0, 0.0
        tally = (LabelledTally(self.spec, self.model.head, self.keep,
                              self.model.hidden if self.model.bidirectional else None, self.weights)
                 if self.labelled and self.spec else None)
        for windows in self.loader.batches(limit):
            sequences += len(windows)
            runner = self._runner(len(windows))
            plan = runner.plan
            if self.labelled:  # every rank counts the batch's valid elements, its rows or not
                labelled_elements += self.loader.norm(windows)
            if plan.local_rows == 0:
                continue  # this data-parallel group has no rows of a short last batch
            lengths = None
            if self.labelled:
                inputs, targets, lengths = self.loader.read(windows, plan.reads)
            else:
                inputs, targets = self.loader.read(windows, plan.reads)
            state = self.model.zero_state(plan.local_rows, torch.empty(0, device=self.model.device),
                                          range(*plan.layers))
            # The ranks of a tp group compute the same (replicated) head: its rank 0 counts the errors.
            observe = None
            if plan.coords["tp"] == 0:
                observe = tally.observe if tally is not None else self._observer(totals) if self.features else None
            # norm = 1: raw sums here, divided once by the split's element count below.
            share, _ = runner.evaluate(inputs, targets, state, 1.0, observe, lengths)
            totals[0] += float(share)
        self.comms.world.Allreduce(MPI.IN_PLACE, totals, MPI.SUM)
        if self.labelled:
            score = Score(totals[0] / labelled_elements, int(labelled_elements), sequences)
            if tally is not None:
                tally.reduce(self.comms.world)
                score.metrics = tally.metrics()
                score.weighted_loss = tally.weighted_loss()
                score.predictions = tally.gather(self.comms.world) if self.keep else None
            return score
        per_value = self.cfg.data.seq_len * sequences   # one-step predictions (RMSE, MAE)
        # Every loss term: with train.horizon > 1 also the origins' steps ahead (mpirnn/data/horizon.py).
        elements = self.loader.targets_per_window * sequences * (self.features or 1)
        score = Score(totals[0] / elements, elements, sequences)
        if self.features:
            F = self.features
            score.rmse = [math.sqrt(v / per_value) for v in totals[1:1 + F]]
            score.mae = [v / per_value for v in totals[1 + F:]]
        return score

    def _observer(self, totals: np.ndarray):
        F, scale = self.features, self.scale

        def observe(outputs, targets):
            # The point forecast of the next step (the median where the head predicts quantiles).
            targets = targets if isinstance(targets, torch.Tensor) else targets.next_values()
            predicted = self.model.predicts.next_point(self.model.head, outputs)
            error = (predicted.double() - targets.double()) * scale.to(outputs.device)
            flat = error.reshape(-1, F)
            totals[1:1 + F] += flat.square().sum(0).cpu().numpy()
            totals[1 + F:] += flat.abs().sum(0).cpu().numpy()

        return observe

    def close(self) -> None:
        self.runners.clear()
