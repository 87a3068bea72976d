"""Predict every sequence of a labelled split (tag, classify, regress) with a trained checkpoint, on any grid.

    python -m mpirnn.predict --checkpoint runs/x/checkpoints [--data DIR] [--split val|train]
                             --out P.csv|P.h5 [--plot C.png] [--best] [--set parallel.sp=2 ...]
    mpirun -n 4 python -m mpirnn.predict --checkpoint DIR --out p.csv --set parallel.dp=2 --set parallel.sp=2

Writes one line per sequence in split order (classify: row, the predicted class, its
probability and p_<class> for every class; regress: the predicted values in data units) or one
per valid step (tag, row and step; .h5 is the better choice for long data), the true label last,
and the task's metrics as P.json beside it (accuracy, macro-F1, per class and the confusion
matrix; or RMSE/MAE in data units); --plot draws the confusion matrix. The split defaults to val
where the dataset has one, else train. Every grid gives the same file. docs/inference.md
describes every column and field.
"""

from __future__ import annotations

import argparse
import sys

from mpi4py import MPI

from mpirnn.distributed.launch import run_guarded
from mpirnn.inference.command import add_checkpoint_arguments


def parse_args(argv):
    from mpirnn.distributed.launch import RankZeroParser

    parser = RankZeroParser(prog="python -m mpirnn.predict", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--data", help="dataset directory (default: the one the checkpoint was trained on)")
    parser.add_argument("--split", choices=("val", "train"), default=None,
                        help="which split to predict (default: val where the dataset has one, else train)")
    parser.add_argument("--out", required=True, metavar="P.csv|P.h5",
                        help="the predictions (P.json with the metrics is written beside it)")
    parser.add_argument("--plot", metavar="C.png", help="draw the confusion matrix (needs matplotlib)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="parallel.*, data.batch_size, model.dtype, train.device (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mpirnn.inference.prediction import predict

    return predict(args, MPI.COMM_WORLD)


def cli() -> None:
    """Console-script entry point (`mpirnn-predict`)."""
    sys.exit(run_guarded(main))


if __name__ == "__main__":
    cli()
