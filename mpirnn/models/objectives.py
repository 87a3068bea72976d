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
"""

from __future__ import annotations

from torch.nn import functional as F


def labelled_loss_sum(head, outputs, targets):
    """The summed loss of the scored elements of one unit (0 where none falls in it): `outputs`
    [b, width, H] are the unit's top outputs, `targets` its LabelledTargets."""
    where, labels = targets.scored(outputs.shape[1])
    prediction = head(outputs[where])
    if targets.task == "regress":
        return F.mse_loss(prediction, labels.to(prediction.dtype), reduction="sum")
    weights = None if targets.weights is None else targets.weights.to(prediction.dtype)
    return F.cross_entropy(prediction, labels, weight=weights, reduction="sum")
