"""What the head is trained to predict for a labelled task, and its summed loss (docs/tasks.md).

    tag       a class at every valid step          cross-entropy over the valid steps
    classify  a class per sequence                 cross-entropy at each sequence's last valid step
    regress   K values per sequence (normalized)   squared error at each sequence's last valid step

A unit of work (rows x time chunk, mpirnn/parallel/wavefront.py) scores only what falls inside
it (`targets.scored`, mpirnn/data/labelled_targets.py): the valid steps of its chunk, or the
rows whose last valid step lies in its chunk (under sequence parallelism that step may be on
any segment's rank). Losses are sums, divided by the global count of valid elements
(class-weighted where asked) by the caller, so the units of any grid add up to the serial loss
exactly. Padded steps are never scored: a one-direction layer's outputs at valid steps never
depend on the padding after them, so the loss, every gradient and every prediction are those
of the sequence alone (checked against PyTorch's pack_padded_sequence:
tests/mpi/test_labelled_exact.py).

Bidirectional layers (outputs [forward; reverse]): a sequence's one prediction (classify,
regress) reads both directions' ends, as PyTorch's h_n gives them: the forward half at the
row's last valid step and the reverse half at step 0 (where the reverse direction ends). A unit
covers whole sequences (time chunks are refused with bidirectional layers); under sequence
parallelism the two ends lie on different segments' ranks, which bring them together on
segment 0 first (`ends_loss_sum`, mpirnn/parallel/bidirectional_wavefront.py). `tag` reads
[forward; reverse] at every valid step.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def scored_outputs(outputs, targets, reverse_from: int | None = None):
    """(what the head reads for each scored element of a unit, their labels). `reverse_from`:
    the width of the forward half of bidirectional outputs (None: one direction)."""
    where, labels = targets.scored(outputs.shape[1])
    if reverse_from is None or targets.task == "tag":
        return outputs[where], labels
    if targets.t0 != 0:
        raise RuntimeError("a bidirectional sequence readout needs the unit that holds step 0 of its rows")
    rows, last = where
    ends = torch.cat([outputs[rows, last, :reverse_from], outputs[rows, 0, reverse_from:]], dim=1)
    return ends, labels


def labelled_loss_sum(head, outputs, targets, reverse_from: int | None = None):
    """The summed loss of the scored elements of one unit (0 where none falls in it): `outputs`
    [b, width, H] are the unit's top outputs, `targets` its LabelledTargets."""
    chosen, labels = scored_outputs(outputs, targets, reverse_from)
    prediction = head(chosen)
    if targets.task == "regress":
        return F.mse_loss(prediction, labels.to(prediction.dtype), reduction="sum")
    weights = None if targets.weights is None else targets.weights.to(prediction.dtype)
    return F.cross_entropy(prediction, labels, weight=weights, reduction="sum")


def partial_ends(outputs, targets, reverse_from: int) -> torch.Tensor:
    """A segment's share of its rows' [forward; reverse] ends [b, 2H] from its top outputs [b, width, 2H]
    (sequence parallelism, bidirectional): the forward half of the rows whose last valid step lies
    in it, the reverse half where it holds step 0, zeros elsewhere; summed over the segments they
    are every row's ends."""
    ends = outputs.new_zeros(outputs.shape[0], outputs.shape[2])
    rows, last = targets.scored(outputs.shape[1])[0]
    ends[rows, :reverse_from] = outputs[rows, last, :reverse_from]
    if targets.t0 == 0:
        ends[:, reverse_from:] = outputs[:, 0, reverse_from:]
    return ends


def ends_loss_sum(head, ends, targets):
    """The summed loss of every row of a sequence task from its ends [b, 2H] (`partial_ends`, summed)."""
    prediction = head(ends)
    if targets.task == "regress":
        return F.mse_loss(prediction, targets.labels.to(prediction.dtype), reduction="sum")
    weights = None if targets.weights is None else targets.weights.to(prediction.dtype)
    return F.cross_entropy(prediction, targets.labels, weight=weights, reduction="sum")
