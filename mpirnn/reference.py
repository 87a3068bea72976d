"""The serial reference: the plain model trained on one process, no MPI anywhere.

Every parallel path is checked against this (same seed, same global batches, same
optimizer and learning-rate schedule), so it is written as plainly as possible and shares
only the model, the sampler, the reader and the optimizer settings (training/optim.py)
with the parallel code.

    python -m mpirnn.reference --set train.steps=20    # prints the serial loss per step
"""

from __future__ import annotations

import argparse
import sys

import torch

from mpirnn.config import load_config
from mpirnn.data.manifest import load_manifest
from mpirnn.data.model_inputs import resolve_inputs
from mpirnn.models import build_model
from mpirnn.models.dropout import DropoutKey
from mpirnn.grid import Grid
from mpirnn.parallel.plan import make_plan
from mpirnn.training import tasks
from mpirnn.training.optim import lr_at, make_optimizer, set_lr

SERIAL = Grid(1)
SERIAL_COORDS = {"dp": 0, "sp": 0, "pp": 0, "tp": 0}


def serial_losses(cfg, steps: int | None = None) -> list[float]:
    """Losses of `steps` optimizer steps of the serial run of `cfg`."""
    manifest = load_manifest(cfg.data.path)
    tasks.adopt_row_length(cfg, manifest, say=False)
    tasks.adopt_horizon(cfg, manifest)
    dtype = getattr(torch, cfg.model.dtype)
    inputs = resolve_inputs(manifest, cfg)
    model = build_model(cfg, vocab_size=manifest.vocab_size if manifest.is_tokens else None,
                        features=manifest.features if not manifest.is_tokens else None,
                        outputs=tasks.head_outputs(manifest), inputs=inputs and inputs.width)
    plan = make_plan(SERIAL, SERIAL_COORDS, batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len,
                     layers=cfg.model.layers, cell=cfg.model.cell)
    loader = tasks.make_loader(manifest, cfg, plan.reads, "cpu", dtype, 0, tasks.class_weights(cfg, manifest))
    optimizer = make_optimizer(model.parameters(), cfg.train)
    losses, state = [], None
    for step in range(cfg.train.steps if steps is None else steps):
        inputs, targets = loader.batch(step)
        if state is None or loader.restarts(step) or not cfg.train.stateful:
            state = model.zero_state(inputs.shape[0], inputs)
        optimizer.zero_grad()
        set_lr(optimizer, lr_at(step + 1, cfg.train))
        noise = DropoutKey(cfg.model.dropout, cfg.train.seed, step) if cfg.model.dropout else None
        loss, final = model(inputs, targets, state, noise)
        loss = loss / loader.norm(step)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        state = final.detach()
        losses.append(float(loss.detach()))
    loader.close()
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpirnn.reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    for step, loss in enumerate(serial_losses(load_config(args.config, args.overrides)), 1):
        print(step, loss)
    return 0


def cli() -> None:
    """Console-script entry point (`mpirnn-reference`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
