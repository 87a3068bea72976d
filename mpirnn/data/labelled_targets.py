"""The labels a unit of work is scored on, and what a batch's summed loss is divided by.

`LabelledTargets` carries some rows' labels and lengths with the time steps they cover; the
wavefront (mpirnn/parallel/wavefront.py) cuts it per unit like any targets tensor, and the
model's objective (mpirnn/models/objectives.py) asks it which outputs are scored. `row_elements`
gives each row's share of the global count a loss is a mean over, so every grid divides by the
same number. Exercised by: python -m pytest -q tests/test_labelled_targets.py
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True)
class LabelledTargets:
    """The labels of some rows and the time steps [t0, t0 + width) they are scored over.

    labels: tag [b, width] class ids; classify [b] class ids; regress [b, K] normalized values.
    lengths: [b] each row's whole length. Indexing [rows, steps] (slices, relative to t0) gives
    a unit's part, as the wavefront takes it of its targets.
    """

    task: str
    labels: torch.Tensor
    lengths: torch.Tensor
    t0: int = 0
    weights: torch.Tensor | None = None   # per class (tag, classify), or None
    ids: torch.Tensor | None = None       # the rows' ids in the split (CPU), so predictions find their row

    def __getitem__(self, index) -> "LabelledTargets":
        rows, steps = index
        labels = self.labels[rows, steps] if self.task == "tag" else self.labels[rows]
        ids = None if self.ids is None else self.ids[rows]
        return replace(self, labels=labels, lengths=self.lengths[rows], t0=self.t0 + (steps.start or 0), ids=ids)

    def to(self, device) -> "LabelledTargets":
        weights = None if self.weights is None else self.weights.to(device)
        return replace(self, labels=self.labels.to(device), lengths=self.lengths.to(device), weights=weights)

    def scored(self, width: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(where in a unit's outputs [b, width, H] the scored elements are, as an index tuple;
        their labels), in row-major order."""
        if self.task == "tag":
            valid = torch.arange(self.t0, self.t0 + width, device=self.lengths.device)[None] < self.lengths[:, None]
            rows, steps = valid.nonzero(as_tuple=True)
            return (rows, steps), self.labels[rows, steps]
        last = self.lengths - 1 - self.t0
        rows = ((last >= 0) & (last < width)).nonzero(as_tuple=True)[0]
        return (rows, last[rows]), self.labels[rows]


def row_elements(task: str, lengths: np.ndarray, labels: np.ndarray | None = None,
                 weights: np.ndarray | None = None, targets: int = 1) -> np.ndarray:
    """Each row's valid elements: its steps (tag), 1 (classify) or its K values (regress),
    counted with their class's weight where weights are given. `labels` (every row's, [N, T]
    for tag or [N] for classify) are needed only with weights."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if task == "regress":
        return np.full(lengths.shape, float(targets))
    if weights is None:
        return lengths.copy() if task == "tag" else np.ones_like(lengths)
    if task == "classify":
        return np.asarray(weights, np.float64)[labels]
    valid = np.arange(labels.shape[1])[None] < lengths[:, None]
    return np.where(valid, np.asarray(weights, np.float64)[np.where(valid, labels, 0)], 0.0).sum(1)


def balanced_weights(counts) -> np.ndarray:
    """sklearn's "balanced" class weights, n / (classes x count), from the train split's counts
    (a class absent from it gets weight 0: it is never a label there)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights
