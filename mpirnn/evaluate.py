"""Score a trained checkpoint on a whole split of a dataset, on any grid.

    python -m mpirnn.evaluate --checkpoint runs/x/checkpoints [--data DIR] [--split val|train]
                              [--out FILE.json] [--best] [--set parallel.sp=2 ...]
    mpirun -n 4 python -m mpirnn.evaluate --checkpoint DIR --set parallel.sp=4 --set data.seq_len=N

Prints the loss over every value of the split (cross-entropy in nats per token and bits per
byte for byte tokens; mean squared error per normalized value and RMSE/MAE in data units
for series), the same on any grid, and writes it as JSON with --out. With parallel.sp = N
and data.seq_len as long as the whole held-out stream (minus one), the split is scored as
one long sequence cut over the N ranks. docs/inference.md describes every field.
"""

from __future__ import annotations

import argparse
import sys

from mpi4py import MPI

from mpirnn.distributed.launch import run_guarded
from mpirnn.inference.command import add_checkpoint_arguments


def parse_args(argv):
    from mpirnn.distributed.launch import RankZeroParser

    parser = RankZeroParser(prog="python -m mpirnn.evaluate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--data", help="dataset directory (default: the one the checkpoint was trained on)")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="which split to score (default val)")
    parser.add_argument("--out", help="write the result as JSON to this file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="parallel.*, data.seq_len, data.batch_size, model.dtype, train.device (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mpirnn.inference.evaluation import evaluate

    return evaluate(args, MPI.COMM_WORLD)


def cli() -> None:
    """Console-script entry point (`mpirnn-evaluate`)."""
    sys.exit(run_guarded(main))


if __name__ == "__main__":
    cli()
