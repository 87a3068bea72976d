"""The short generated sample printed after training a token model (output.sample_bytes).

Rank 0 samples from the whole serial model. Under pipeline or tensor parallelism it holds only
its stage, or its slice of every layer's hidden units, so the parameters are first gathered by
name, as for a checkpoint, into a whole serial model there. Every rank must call
`print_sample`: a rank that skipped the gather would leave rank 0 waiting for it forever.
"""

from __future__ import annotations

from mpirnn.inference.generation import decode, generate, prompt_ids
from mpirnn.models import build_model
from mpirnn.training.state import gather_weights


def whole_model(cfg, comms, plan, model):
    """The serial model on rank 0 (None elsewhere); every rank must call it."""
    if plan.grid.pp == 1 and plan.grid.tp == 1:
        return model if comms.rank == 0 else None
    weights = gather_weights(comms, plan, model)
    if weights is None:
        return None
    whole = build_model(cfg, vocab_size=model.vocab_size, features=model.features, device=model.device)
    whole.load_state_dict(weights)
    return whole


def print_sample(cfg, comms, plan, model) -> None:
    whole = whole_model(cfg, comms, plan, model)
    if whole is None:
        return
    out = cfg.output
    # The prompt was checked against the vocabulary before training (mpirnn/training/session.py).
    ids = prompt_ids(out.sample_prompt, whole.vocab_size, "output.sample_prompt")
    tokens = generate(whole, ids, out.sample_bytes, seed=cfg.train.seed)
    print(f"sample:\n{decode(ids + tokens, whole.vocab_size)}", flush=True)
