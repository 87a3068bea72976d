"""Generate text with a trained token checkpoint.

    python -m mpirnn.generate --checkpoint runs/x/checkpoints --prompt "def " --bytes 300 \
        [--temperature 0.8] [--seed 0] [--best]

    python -m mpirnn.generate --checkpoint DIR --prompt-bytes 00010203 --bytes 50   # token ids in hex
    python -m mpirnn.generate --checkpoint DIR --prompt-file start.bin --bytes 50

Prints the prompt followed by N sampled tokens (bytes, decoded as UTF-8 with invalid
sequences replaced; for a vocabulary larger than 256 the token ids). Each byte of the prompt
is one token id and must be below the model's vocabulary size: `--prompt` takes text (its
bytes as given on the command line), `--prompt-bytes` hex digits, `--prompt-file` a file's
bytes. The same seed gives the same text. Under `mpirun -n N` rank 0 generates with the
whole model and the other ranks wait.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", help="text to start from (its bytes, as given, are the first tokens)")
    given.add_argument("--prompt-bytes", metavar="HEX", help="the first tokens as hex bytes, e.g. 00010203")
    given.add_argument("--prompt-file", metavar="FILE", help="the first tokens: this file's bytes (read on every rank: under mpirun on several nodes, "
                            "put it on shared storage)")
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
    prompt, setting = read_prompt(args)
    return info, prompt_ids(prompt, info.vocab_size, setting)


def read_prompt(args) -> tuple[str | bytes, str]:
    """(the prompt, which option gave it); ConfigError for hex that is not hex or a file not read."""
    if args.prompt_bytes is not None:
        try:
            return bytes.fromhex(args.prompt_bytes), "--prompt-bytes"
        except ValueError as exc:
            raise ConfigError(f"--prompt-bytes {args.prompt_bytes!r} is not hex bytes ({exc}): give two hex "
                              f"digits per byte, e.g. --prompt-bytes 00010203") from None
    if args.prompt_file is not None:
        try:
            return Path(args.prompt_file).read_bytes(), f"--prompt-file {args.prompt_file}"
        except OSError as exc:
            raise ConfigError(f"--prompt-file {args.prompt_file} cannot be read: {exc.strerror or exc}") from None
    return args.prompt, "--prompt"


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
