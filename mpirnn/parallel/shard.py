"""Which parts of the serial model this rank holds, under the serial names.

Every rank builds the whole model from the seed (so initialization never depends on the
grid), then keeps only its pipeline stage's parts and, under tensor parallelism, its slice of
every layer's hidden units (`stage_model`). Parameter names stay those of the serial model,
which is what makes checkpoints grid-independent (mpirnn/training/state.py gathers and
scatters them by name, using `row_blocks` for the slices).
"""

from __future__ import annotations

import re

import torch

from mpirnn.parallel.tensor import gate_blocks, shard_layers
from mpirnn.parallel.tensor_bidirectional import bidirectional_slice

LAYER = re.compile(r"^layers\.(\d+)\.")


def stage_model(model, plan, group=None):
    """The model cut down to this rank's share: its stage's layers (plus the embedding on the
    first stage and the head on the last), sliced over the tp group when there is one."""
    # The serial names and shapes, in registration order: checkpoints are checked against them.
    model.serial_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if plan.grid.pp > 1:
        model.keep_only(range(*plan.layers), embedding=plan.first_stage, head=plan.last_stage)
    if group is not None and model.bidirectional:
        shard_layers(model, group, bidirectional_slice)
    elif group is not None:
        shard_layers(model, group)
    return model


def owns(name: str, plan) -> bool:
    """Does this rank's stage hold (all or a slice of) the serial parameter `name`?"""
    layer = LAYER.match(name)
    if layer:
        return plan.layers[0] <= int(layer.group(1)) < plan.layers[1]
    if name.startswith("input."):
        return plan.first_stage
    if name.startswith("head."):
        return plan.last_stage
    raise ValueError(f"parameter {name} belongs to no part of the model")


def row_blocks(model, name: str, plan) -> list[tuple[int, int]] | None:
    """The rows [start, stop) of serial parameter `name` this rank holds, one block per gate, in
    the order they are stacked locally; None when it holds the whole tensor."""
    layer = LAYER.match(name)
    if plan.grid.tp == 1 or not layer:
        return None
    gates = model.layers[int(layer.group(1))].tp_gates
    return gate_blocks(gates, model.hidden, plan.coords["tp"], plan.grid.tp)


def replicated(name: str, plan) -> bool:
    """Held whole by every rank of the tp group (so only its rank 0 contributes it)."""
    return plan.grid.tp > 1 and not LAYER.match(name)


def take_rows(whole: torch.Tensor, blocks) -> torch.Tensor:
    """This rank's rows of a serial tensor (`blocks` from row_blocks; None: all of it)."""
    if blocks is None or whole.dim() == 0:
        return whole
    return torch.cat([whole[a:b] for a, b in blocks])
