"""Write a trained checkpoint's model as one file that runs without mpirnn.

    python -m mpirnn.export --checkpoint runs/x/checkpoints [--best] --format torch --out model.pt
    mpirnn-export --checkpoint DIR --format onnx|safetensors --out FILE

torch: TorchScript, `m = torch.jit.load(FILE); m(x)`; onnx: the same graph for onnxruntime
(input "x", output "y"); safetensors: the serial parameters under mpirnn's names. x is token
ids [B, T] (int64) or normalized values [B, T, F]; the output is the head's: logits [B, T, V]
or normalized values [B, T, F]. A tag / classify / regress model (bidirectional too) also takes
each row's length, `m(x, lengths)` (ONNX input "lengths"), and returns per-step or per-row
logits or normalized targets. Each file records this, the config and the normalization
(docs/export.md). Every checkpoint holds the serial model, so the grid that trained it does
not matter. onnx and safetensors need `pip install 'mpirnn[export]'`.
"""

from __future__ import annotations

import argparse
import sys

from mpi4py import MPI

from mpirnn.distributed.agreement import agree
from mpirnn.distributed.launch import run_guarded
from mpirnn.inference.command import add_checkpoint_arguments, find_checkpoint, on_rank0, write_whole


def parse_args(argv):
    from mpirnn.inference.export import FORMATS
    from mpirnn.distributed.launch import RankZeroParser

    parser = RankZeroParser(prog="python -m mpirnn.export", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="torch (TorchScript), onnx or safetensors")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write (replaced if it exists)")
    return parser.parse_args(argv)


def run(args, located) -> None:
    from mpirnn.inference.export import export_bytes
    from mpirnn.inference.load import build

    model, cfg, info = build(located, "cpu")
    write_whole({args.out: export_bytes(args.format, model, cfg, info, located)})
    print(f"mpirnn: step {located.step} of {located.path} written as {args.format} to {args.out}", flush=True)


def main(argv=None) -> int:
    from mpirnn.inference.export import check_format

    args = parse_args(argv)
    world = MPI.COMM_WORLD
    agree(world, check_format, args.format)
    located = find_checkpoint(world, args.checkpoint, args.best)
    on_rank0(world, run, args, located)
    return 0


def cli() -> None:
    """Console-script entry point (`mpirnn-export`)."""
    sys.exit(run_guarded(main))


if __name__ == "__main__":
    cli()
