"""What a labelled task's predictions score, summed where they are made (the last stage).

`LabelledTally.observe` is the `observe` hook of the wavefront (mpirnn/parallel/wavefront.py
`evaluate`): on tp rank 0 of the last stage, for every unit, it takes only the unit's scored
elements (`targets.scored`, mpirnn/data/labelled_targets.py: the valid steps of a chunk for
`tag`, the rows whose last valid step lies in it for `classify` / `regress`), adds them to a
confusion matrix or to sums of errors in data units, and, for `predict`, keeps each
prediction with its row (and step). `reduce` sums the counts over the world and `gather`
brings the predictions to rank 0, in split order, so every grid gives the same numbers.
With class weights (train.class_weights), it also sums each scored element's cross-entropy
times its class's weight and the weights, for the class-weighted loss that training minimizes
(`weighted_loss`; the plain `loss` stays unweighted: docs/tasks.md, "Class weights").

    python -m pytest -q tests/test_inference_task_metrics.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from mpirnn.inference.task_metrics import add_to_confusion, class_metrics, regression_metrics
from mpirnn.models.objectives import scored_outputs


@dataclass
class Predictions:
    """Every scored element of a split, sorted by (row, step): rows and steps are split row ids
    and time steps (steps None unless `tag`); values are class probabilities [n, classes] or
    predicted values in data units [n, K]; labels the true class ids [n] or values [n, K]."""

    rows: np.ndarray
    steps: np.ndarray | None
    values: np.ndarray
    labels: np.ndarray


class LabelledTally:
    def __init__(self, spec, head, keep: bool = False, reverse_from: int | None = None, weights=None):
        """`spec`: the TaskSpec the model was trained on (classes, or targets and their
        normalization); `head`: the model's head; `keep`: keep every prediction (predict);
        `weights`: per-class weights (tag, classify), or None."""
        self.spec, self.head = spec, head
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weighted = np.zeros(2, dtype=np.float64)   # sum of weight x cross-entropy, sum of weights
        self.reverse_from = reverse_from  # bidirectional: the width of the forward half of the outputs
        self.classes = spec.n_classes
        if self.classes:
            self.confusion = np.zeros((self.classes, self.classes), dtype=np.int64)
        else:
            self.errors = np.zeros(2 * spec.targets + 1, dtype=np.float64)  # squared, absolute, sequences
        self.kept: list[tuple] | None = [] if keep else None

    def observe(self, outputs: torch.Tensor, targets) -> None:
        where, labels = targets.scored(outputs.shape[1])
        if len(labels) == 0:
            return
        chosen, _ = scored_outputs(outputs, targets, self.reverse_from)
        prediction = self.head(chosen).double()
        if self.classes:
            values = torch.softmax(prediction, dim=-1).cpu().numpy()
            truth = labels.cpu().numpy()
            if self.weights is not None:
                weight = self.weights.to(prediction.device)[labels]
                entropy = torch.nn.functional.cross_entropy(prediction, labels, reduction="none")
                self.weighted += [float((weight * entropy).sum()), float(weight.sum())]
            add_to_confusion(self.confusion, truth, values.argmax(1))
        else:
            values = self._data_units(prediction).cpu().numpy()
            truth = self._data_units(labels.double()).cpu().numpy()
            K = self.spec.targets
            error = values - truth
            self.errors[:K] += np.square(error).sum(0)
            self.errors[K:2 * K] += np.abs(error).sum(0)
            self.errors[-1] += len(truth)
        if self.kept is not None:
            rows = targets.ids[where[0].cpu()].numpy()
            steps = (targets.t0 + where[1]).cpu().numpy() if targets.task == "tag" else None
            self.kept.append((rows, steps, values, truth))

    def _data_units(self, values: torch.Tensor) -> torch.Tensor:
        norm = self.spec.target_normalization
        return values if norm is None else norm.denormalize(values)

    def reduce(self, comm) -> None:
        """Sum every rank's counts (ranks that scored nothing add zeros); call on every rank."""
        comm.Allreduce(MPI.IN_PLACE, self.confusion if self.classes else self.errors, MPI.SUM)
        if self.weights is not None:
            comm.Allreduce(MPI.IN_PLACE, self.weighted, MPI.SUM)

    def weighted_loss(self) -> float | None:
        """After `reduce`: sum of w[label] x cross-entropy over sum of w[label], the training
        loss's measure; None without weights, or where no scored label has a weight."""
        if self.weights is None or not self.weighted[1] > 0:
            return None
        return float(self.weighted[0] / self.weighted[1])

    def metrics(self) -> dict:
        """After `reduce`: the task's metrics (mpirnn/inference/task_metrics.py)."""
        if self.classes:
            return class_metrics(self.confusion, self.spec.classes)
        K = self.spec.targets
        return regression_metrics(self.errors[:K], self.errors[K:2 * K], int(self.errors[-1]))

    def gather(self, comm) -> Predictions | None:
        """Every rank's kept predictions on rank 0, sorted by (row, step); None elsewhere.

        Sent as one float64 table per rank (row, step, values, truth) with the buffer methods
        Gather/Gatherv: nothing is pickled."""
        width = self.classes or self.spec.targets
        truth_width = 1 if self.classes else self.spec.targets
        columns = 2 + width + truth_width
        table = np.zeros((0, columns))
        if self.kept:
            table = np.concatenate([np.column_stack([rows, steps if steps is not None else np.full(len(rows), -1),
                                                     values, np.asarray(truth).reshape(len(rows), -1)])
                                    for rows, steps, values, truth in self.kept]).astype(np.float64)
        counts = np.zeros(comm.size, dtype=np.int64)
        comm.Gather(np.array([table.size], dtype=np.int64), counts, root=0)
        received = np.empty(int(counts.sum()) if comm.rank == 0 else 0, dtype=np.float64)
        comm.Gatherv(np.ascontiguousarray(table).reshape(-1), [received, counts] if comm.rank == 0 else None, root=0)
        if comm.rank != 0:
            return None
        table = received.reshape(-1, columns)
        rows = table[:, 0].astype(np.int64)
        steps = table[:, 1].astype(np.int64) if self.spec.task == "tag" else None
        order = np.lexsort((steps, rows)) if steps is not None else np.argsort(rows, kind="stable")
        truth = table[:, 2 + width:]
        truth = truth[:, 0].astype(np.int64) if self.classes else truth
        return Predictions(rows[order], None if steps is None else steps[order], table[order, 2:2 + width],
                           truth[order])
