"""Training entry point: config → grid → data → model → parallelize → train loop → checkpoint.

    mpirun -n 4 python -m mpirnn.train [--config FILE.toml] [--set section.key=value ...]

With no --config it trains the embedded default (a byte-level LSTM on Python's
standard library sources, prepared on first use).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from mpi4py import MPI

from mpirnn import config as config_module
from mpirnn.comm import Comms, agree
from mpirnn.data.loader import BatchLoader, check_fit
from mpirnn.data.manifest import load_manifest
from mpirnn.data.validate import validate_dataset
from mpirnn.device import bind
from mpirnn.grid import Grid
from mpirnn.launch import run_guarded
from mpirnn.loop import Trainer
from mpirnn.models import build_model

DEFAULT_DATA = config_module.DataConfig().path


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m mpirnn.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file (see `python -m mpirnn.config` for every key)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one key, e.g. --set train.steps=100 (repeatable)")
    return parser.parse_args(argv)


def ensure_default_data(cfg, world) -> None:
    """The embedded default prepares its corpus on first use (rank 0 writes, the others wait)."""
    if cfg.data.path != DEFAULT_DATA or (Path(DEFAULT_DATA) / "manifest.json").exists():
        return
    if world.rank == 0:
        from mpirnn.data.corpus import prepare_stdlib_corpus
        print(f"mpirnn: preparing the default corpus in {DEFAULT_DATA} (Python standard library sources)",
              file=sys.stderr, flush=True)
        prepare_stdlib_corpus(DEFAULT_DATA)
    world.Barrier()


def open_data(cfg, grid, world):
    """Load and check the dataset on every rank (each validates a share of the shards)."""
    manifest = load_manifest(cfg.data.path)
    if cfg.data.validate:
        validate_dataset(manifest, part=world.rank, parts=world.size)
    check_fit(manifest, cfg, grid)
    return manifest


def broadcast_parameters(model, comm) -> None:
    """Rank 0's parameters everywhere (they are equal already by seeding; this makes it certain)."""
    for tensor in model.state_dict().values():
        host = tensor.detach().cpu().contiguous()
        comm.Bcast(host.numpy(), root=0)
        tensor.copy_(host)


def main(argv=None) -> int:
    args = parse_args(argv)
    world = MPI.COMM_WORLD
    cfg = agree(world, config_module.load_config, args.config, args.overrides)
    grid = agree(world, lambda: _grid(cfg, world.size))
    comms = Comms.create(grid)
    try:
        device = agree(world, bind, cfg.train.device, cfg.train.threads, comms.local_rank, comms.local_size)
        agree(world, ensure_default_data, cfg, world)
        manifest = agree(world, open_data, cfg, grid, world)
        model = build_model(cfg, vocab_size=manifest.vocab_size if manifest.kind == "tokens" else None,
                            features=manifest.features if manifest.kind != "tokens" else None, device=device)
        broadcast_parameters(model, comms.world)
        loader = BatchLoader(manifest, cfg, grid, comms.coords, device, getattr(torch, cfg.model.dtype))
        trainer = Trainer(cfg, comms, model, loader)
        try:
            return trainer.run()
        finally:
            trainer.close()
            loader.close()
    finally:
        comms.free()


def _grid(cfg, world_size: int) -> Grid:
    p = cfg.parallel
    grid = Grid(world_size, p.dp, p.sp, p.pp, p.tp)
    grid.require_available()
    return grid


if __name__ == "__main__":
    sys.exit(run_guarded(main))


def cli() -> None:
    """Console-script entry point (`mpirnn-train`)."""
    sys.exit(run_guarded(main))
