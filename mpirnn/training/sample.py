"""The short generated sample printed after training a token model (output.sample_bytes).

Rank 0 samples from the whole model. Under pipeline parallelism it holds only the first
stage, so the stages' parameters are first gathered by name, as for a checkpoint, into a
whole serial model there.
"""

from __future__ import annotations

import torch

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
    prompt = torch.tensor(list(out.sample_prompt.encode()), dtype=torch.long, device=whole.device)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    tokens = whole.generate(prompt, out.sample_bytes, generator=generator)
    text = bytes(prompt.tolist() + tokens.tolist()).decode("utf-8", "replace")
    print(f"sample:\n{text}", flush=True)
