"""Training entry point: config → grid → data → model → parallelize → train loop → checkpoint.

    mpirun -n 4 python -m mpirnn.train [--config FILE.toml] [--set section.key=value ...]
    mpirnn-train --version                  # the same entry point as a console script

With no --config it trains the embedded default (a byte-level LSTM on Python's
standard library sources, prepared on first use). The config and the grid are agreed
by every rank before torch is even imported, so a wrong key fails in well under a second.
"""

from __future__ import annotations

import argparse
import sys

from mpi4py import MPI

from mpirnn import __version__
from mpirnn import config as config_module
from mpirnn.distributed.agreement import agree
from mpirnn.distributed.launch import RankZeroParser, run_guarded
from mpirnn.parallel.plan import make_grid
from mpirnn.training.tensorboard import check_installed as check_tensorboard


def parse_args(argv):
    parser = RankZeroParser(prog="python -m mpirnn.train", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file (see `python -m mpirnn.config` for every key)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one key, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--version", action="version", version=f"mpirnn {__version__}")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    world = MPI.COMM_WORLD
    cfg = agree(world, config_module.load_config, args.config, args.overrides)
    grid = agree(world, make_grid, cfg, world.size)
    agree(world, check_tensorboard, cfg)
    from mpirnn.training.session import train  # torch and h5py load only once the config is known to be good

    return train(cfg, grid)


def cli() -> None:
    """Console-script entry point (`mpirnn-train`)."""
    sys.exit(run_guarded(main))


if __name__ == "__main__":
    cli()
