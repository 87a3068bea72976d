"""The optimizer (Adam or AdamW) and the learning rate of each step, a pure function of the step.

Because the rate depends only on (step, train settings), a resumed run sets exactly the
rates the uninterrupted run would have: nothing about the schedule is stored in a
checkpoint. The trainer (mpirnn/training/loop.py) and the serial reference
(mpirnn/reference.py) both build their optimizer here, so the exactness tests compare like
with like.

    python -m pytest -q tests/test_optim.py
"""

from __future__ import annotations

import math

import torch


def make_optimizer(params, train) -> torch.optim.Optimizer:
    """Adam (weight decay added to the gradient, L2) or AdamW (weight decay decoupled from it).

    The rate given here is the first step's; the loop sets every step's rate with `set_lr`.
    """
    kind = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=lr_at(1, train), weight_decay=train.weight_decay)


def apply_settings(optimizer: torch.optim.Optimizer, train) -> None:
    """Make the run's settings govern after a checkpoint's param_groups were loaded.

    Loading an optimizer state copies the saved hyperparameters (weight decay, and on newer
    torch whether it is decoupled); this run's config decides them, as it does the rate.
    """
    for group in optimizer.param_groups:
        group["weight_decay"] = train.weight_decay
        if "decoupled_weight_decay" in group:
            group["decoupled_weight_decay"] = train.optimizer == "adamw"


def lr_at(step: int, train) -> float:
    """The rate of optimizer step `step` (1-based) of a run of `train.steps` steps.

    Linear warm-up from train.lr / warmup_steps to train.lr over the first warmup_steps steps,
    then either constant or a half cosine from train.lr down to train.min_lr at the last step.
    """
    warmup = train.warmup_steps
    if warmup > 0 and step <= warmup:
        return train.lr * step / warmup
    if train.schedule == "constant":
        return train.lr
    # The first step after warm-up runs at train.lr, the last (step == train.steps) at min_lr.
    span = max(1, train.steps - warmup - 1)
    progress = min(1.0, max(0.0, (step - warmup - 1) / span))
    return train.min_lr + (train.lr - train.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
