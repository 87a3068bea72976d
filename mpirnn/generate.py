"""Generate text with a trained token checkpoint.

    python -m mpirnn.generate --checkpoint runs/x/checkpoints --prompt "def " --bytes 300 \
        [--temperature 0.8] [--seed 0] [--best]

Prints the prompt followed by N sampled tokens (bytes, decoded as UTF-8 with invalid
sequences replaced; for a vocabulary larger than 256 the token ids). Each byte of the prompt
is one token id and must be below the model's vocabulary size. The same seed gives the same
text. Under `mpirun -n N` rank 0 generates with the whole model and the other ranks wait.
"""

from __future__ import annotations

import argparse
import sys

from mpi4py import MPI

from mpirnn.distributed.agreement import agree
from mpirnn.distributed.launch import run_guarded
from mpirnn.errors import ConfigError
from mpirnn.inference.command import add_checkpoint_arguments, find_checkpoint, on_rank0


def parse_args(argv):
    from mpirnn.distributed.launch import RankZeroParser

    parser = RankZeroParser(prog="python -m mpirnn.generate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--prompt", required=True, help="text to start from (its UTF-8 bytes are the first tokens)")
    parser.add_argument("--bytes", type=int, default=300, metavar="N", help="tokens to generate (default 300)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    return parser.parse_args(argv)


def check_request(args, located) -> tuple[object, list[int]]:
    from mpirnn.inference.generation import prompt_ids
    from mpirnn.inference.load import model_info, saved_config

    info = model_info(located, saved_config(located))
    if not info.tokens:
        raise ConfigError(f"generate needs a token model, and {located.path} holds {info.describe()}: use "
                          f"python -m mpirnn.forecast for series models")
    if args.bytes < 1:
        raise ConfigError(f"--bytes {args.bytes}: generate at least 1 token")
    if not args.temperature > 0:
        raise ConfigError(f"--temperature {args.temperature}: use a temperature above 0 (lower is more predictable)")
    return info, prompt_ids(args.prompt, info.vocab_size, "--prompt")


def run(args, located, ids: list[int]) -> None:
    from mpirnn.inference.generation import decode, generate
    from mpirnn.inference.load import build

    model, _, info = build(located, "cpu")
    tokens = generate(model, ids, args.bytes, temperature=args.temperature, seed=args.seed)
    print(decode(ids + tokens, info.vocab_size), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    world = MPI.COMM_WORLD
    located = find_checkpoint(world, args.checkpoint, args.best)
    _, ids = agree(world, check_request, args, located)
    on_rank0(world, run, args, located, ids)
    return 0


def cli() -> None:
    """Console-script entry point (`mpirnn-generate`)."""
    sys.exit(run_guarded(main))


if __name__ == "__main__":
    cli()
