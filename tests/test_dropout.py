"""Counter-based dropout masks (mpirnn/models/dropout.py): the rate asked for, the scaling of
nn.Dropout, and the same mask for an element whichever part of the batch computes it."""

from __future__ import annotations

import torch

from mpirnn.models.dropout import DropoutKey


def test_drops_the_rate_asked_for_and_scales_the_rest():
    key = DropoutKey(0.3, seed=5, step=2)
    x = torch.ones(16, 50, 40, dtype=torch.float64)
    out = key.apply(1, x)
    dropped = float((out == 0).double().mean())
    # 32,000 draws: the share is within 4 standard deviations (0.01) of the rate.
    assert abs(dropped - 0.3) < 0.012, dropped
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.7))


def test_a_part_draws_the_masks_of_the_whole():
    whole = DropoutKey(0.5, seed=1, step=7).keep(2, torch.Size([6, 23, 8]), "cpu")
    part = DropoutKey(0.5, seed=1, step=7).at(2, 9).keep(2, torch.Size([3, 5, 8]), "cpu")
    assert torch.equal(part, whole[2:5, 9:14])


def test_masks_differ_by_step_layer_seed_and_element():
    shape = torch.Size([4, 30, 16])
    base = DropoutKey(0.5, seed=1, step=7).keep(1, shape, "cpu")
    for other in (DropoutKey(0.5, seed=1, step=8).keep(1, shape, "cpu"),
                  DropoutKey(0.5, seed=2, step=7).keep(1, shape, "cpu"),
                  DropoutKey(0.5, seed=1, step=7).keep(2, shape, "cpu")):
        agree = float((other == base).double().mean())
        assert 0.4 < agree < 0.6, agree   # independent masks agree on about half the elements
    # Neighbouring rows, steps and units are not copies of each other.
    assert not torch.equal(base[0], base[1]) and not torch.equal(base[:, 0], base[:, 1])
    assert not torch.equal(base[..., 0], base[..., 1])


def test_rate_zero_is_the_identity():
    x = torch.randn(2, 3, 4)
    assert DropoutKey(0.0, seed=0, step=0).apply(1, x) is x
