"""The short generated sample printed after training a token model (output.sample_bytes).

Rank 0 samples from the whole model. Under pipeline parallelism it holds only the first
stage, so the stages' parameters are first gathered by name, as for a checkpoint, into a
whole serial model there.
"""

from __future__ import annotations

from mpirnn.inference.generation import decode, generate
from mpirnn.models import build_model
from mpirnn.training.state import gather_state


def whole_model(cfg, comms, plan, model, optimizer, step: int):
    """The serial model on rank 0 (None elsewhere); every rank must call it."""
    if plan.grid.pp == 1:
        return model if comms.rank == 0 else None
    state = gather_state(comms, plan, model, optimizer, step, None)
    if state is None:
        return None
    whole = build_model(cfg, vocab_size=model.vocab_size, features=model.features, device=model.device)
    whole.load_state_dict(state["model"])
    return whole


def print_sample(cfg, comms, plan, model, optimizer, step: int) -> None:
    whole = whole_model(cfg, comms, plan, model, optimizer, step)
    if whole is None:
        return
    out = cfg.output
    # The prompt was checked against the vocabulary before training (mpirnn/training/session.py).
    ids = list(out.sample_prompt.encode())
    tokens = generate(whole, ids, out.sample_bytes, seed=cfg.train.seed)
    print(f"sample:\n{decode(ids + tokens, whole.vocab_size)}", flush=True)
