"""One training session on this rank, from an agreed config and grid to the end of the loop.

Every check that could fail for a reason the user can fix (device, data, fit of the data to
the config) runs on every rank inside `agree`, so it is reported once and no rank hangs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mpirnn import config as config_module
from mpirnn.distributed.agreement import agree
from mpirnn.distributed.mesh import Comms
from mpirnn.data.loader import BatchLoader, check_fit
from mpirnn.data.manifest import load_manifest
from mpirnn.data.validate import validate_dataset
from mpirnn.distributed.device import bind
from mpirnn.training.loop import Trainer
from mpirnn.models import build_model

DEFAULT_DATA = config_module.DataConfig().path


def ensure_default_data(cfg, world) -> None:
    """The embedded default prepares its corpus on first use.

    Rank 0 alone decides and writes; the others return at once. Run inside `agree`, whose
    own collective is what makes them wait, so a failure on rank 0 is reported, not a hang.
    """
    if world.rank != 0 or cfg.data.path != DEFAULT_DATA or (Path(DEFAULT_DATA) / "manifest.json").exists():
        return
    from mpirnn.data.corpus import prepare_stdlib_corpus
    print(f"mpirnn: preparing the default corpus in {DEFAULT_DATA} (Python standard library sources)",
          file=sys.stderr, flush=True)
    prepare_stdlib_corpus(DEFAULT_DATA)


def open_data(cfg, grid, world):
    """Load and check the dataset on every rank, each taking a share of the shards.

    Every shard is opened and its layout checked even with data.validate = false (that is
    cheap), so a truncated file is found here, collectively, not by one rank mid-run.
    """
    manifest = load_manifest(cfg.data.path)
    validate_dataset(manifest, part=world.rank, parts=world.size, scan_values=cfg.data.validate)
    check_fit(manifest, cfg, grid)
    return manifest


def broadcast_parameters(model, comm) -> None:
    """Rank 0's parameters everywhere (they are equal already by seeding; this makes it certain)."""
    for tensor in model.state_dict().values():
        host = tensor.detach().cpu().contiguous()
        comm.Bcast(host.numpy(), root=0)
        tensor.copy_(host)


def train(cfg, grid) -> int:
    comms = Comms.create(grid)
    try:
        world = comms.world
        device = agree(world, bind, cfg.train.device, cfg.train.threads, comms.local_rank, comms.local_size)
        agree(world, ensure_default_data, cfg, world)
        manifest = agree(world, open_data, cfg, grid, world)
        tokens = manifest.kind == "tokens"
        model = build_model(cfg, vocab_size=manifest.vocab_size if tokens else None,
                            features=None if tokens else manifest.features, device=device)
        broadcast_parameters(model, world)
        loader = BatchLoader(manifest, cfg, grid, comms.coords, device, getattr(torch, cfg.model.dtype), world.rank)
        trainer = Trainer(cfg, comms, model, loader)
        try:
            return trainer.run()
        finally:
            trainer.close()
            loader.close()
    finally:
        comms.free()
