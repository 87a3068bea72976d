"""Why sequence parallelism passes boundary states: the naive split is not the serial model.

"Split the sequence into K pieces, run each from a zero state, concatenate" changes the
loss; running the same pieces in a chain, each starting from the previous piece's final
state (what mpirnn's sp ranks do across processes), gives the serial loss exactly.
"""

import pytest
import torch

from mpirnn.grid import chunk
from mpirnn.models.model import RecurrentModel


def model_and_batch(cell):
    torch.manual_seed(0)
    model = RecurrentModel(cell, hidden=16, layers=2, embed=8, vocab_size=20).double()
    data = torch.randint(0, 20, (4, 41), generator=torch.Generator().manual_seed(1))
    return model, data[:, :-1], data[:, 1:]


def segmented_loss(model, inputs, targets, segments, chained):
    state = model.zero_state(inputs.shape[0], inputs)
    total = 0.0
    for s in range(segments):
        time = slice(*chunk(inputs.shape[1], segments, s))
        start = state if chained else model.zero_state(inputs.shape[0], inputs)
        loss, state = model(inputs[:, time], targets[:, time], start)
        total = total + loss
    return total / targets.numel()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mingru", "minlstm"])
@pytest.mark.parametrize("segments", [2, 3, 4])
def test_naive_split_differs_and_chained_split_is_exact(cell, segments):
    model, inputs, targets = model_and_batch(cell)
    with torch.no_grad():
        serial = float(model(inputs, targets)[0] / targets.numel())
        naive = float(segmented_loss(model, inputs, targets, segments, chained=False))
        chained = float(segmented_loss(model, inputs, targets, segments, chained=True))
    # Far outside rounding: the chained split below agrees with the serial loss to 1e-12.
    assert abs(naive - serial) > 1e-6, "the naive split should change the loss"
    assert chained == pytest.approx(serial, rel=1e-12)
