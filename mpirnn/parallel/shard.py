"""Which parts of the serial model this rank holds, under the serial names.

Every rank builds the whole model from the seed (so initialization never depends on the
grid), then keeps only its pipeline stage's parts (`stage_model`). Parameter names stay those
of the serial model, which is what makes checkpoints grid-independent
(mpirnn/training/state.py gathers and scatters them by name).
"""

from __future__ import annotations

import re

LAYER = re.compile(r"^layers\.(\d+)\.")


def stage_model(model, plan):
    """The model cut down to this rank's stage: its layers, plus the embedding on the first
    stage and the head on the last."""
    # The serial names and shapes, in registration order: checkpoints are checked against them.
    model.serial_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if plan.grid.pp == 1:
        return model
    return model.keep_only(range(*plan.layers), embedding=plan.first_stage, head=plan.last_stage)


def owns(name: str, plan) -> bool:
    """Does this rank's stage hold the serial parameter `name`?"""
    layer = LAYER.match(name)
    if layer:
        return plan.layers[0] <= int(layer.group(1)) < plan.layers[1]
    if name.startswith("input."):
        return plan.first_stage
    if name.startswith("head."):
        return plan.last_stage
    raise ValueError(f"parameter {name} belongs to no part of the model")
