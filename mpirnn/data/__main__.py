"""Command line for datasets: prepare, validate, info.

    python -m mpirnn.data prepare --out DIR (--text PATH... | --csv FILE --columns A,B
                                  [--window T] | --npy FILE | --stdlib) [options]
    python -m mpirnn.data validate DIR
    python -m mpirnn.data info DIR

A DataError ends the command with one line `mpirnn.data: <message>` on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from mpirnn.data.manifest import Manifest, load_manifest
from mpirnn.errors import DataError, one_line

PROG = "mpirnn.data"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}",
                                     description="Prepare, validate and describe datasets.")
    commands = parser.add_subparsers(dest="command", required=True)

    prep = commands.add_parser("prepare", help="build a sharded HDF5 dataset")
    prep.add_argument("--out", required=True, help="dataset directory to create")
    source = prep.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", metavar="PATH",
                        help="text files or directories: byte-level tokens (vocab 256)")
    source.add_argument("--csv", metavar="FILE", help="CSV file with a header line")
    source.add_argument("--npy", metavar="FILE", help=".npy array (1-D, 2-D or 3-D)")
    source.add_argument("--stdlib", action="store_true",
                        help="the Python standard library's .py files (no download)")
    prep.add_argument("--columns", help="CSV columns to use, comma-separated: A,B")
    prep.add_argument("--window", type=int, metavar="T",
                      help="CSV: cut into non-overlapping windows of T rows (sequences)")
    prep.add_argument("--shard-size", type=int, metavar="N",
                      help="rows (stream steps) per shard; default ~4M tokens / ~16 MB")
    prep.add_argument("--max-bytes", type=int, metavar="N",
                      help="text/stdlib: stop after N bytes (stdlib default 8000000)")
    prep.add_argument("--suffix", action="append", metavar=".EXT",
                      help="text directories: only files ending so (repeatable or a,b)")
    prep.add_argument("--vocab-size", type=int, metavar="V",
                      help="npy tokens: vocabulary size (default max id + 1)")
    prep.add_argument("--force", action="store_true", help="overwrite an existing dataset")

    for name, text in (("validate", "check every shard, value by value, and the checksums"),
                       ("info", "print the manifest summary")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("dir", metavar="DIR", help="dataset directory")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense with one input kind."""
    only = {"columns": "csv", "window": "csv", "vocab_size": "npy", "suffix": "text",
            "max_bytes": ("text", "stdlib")}
    for option, inputs in only.items():
        inputs = (inputs,) if isinstance(inputs, str) else inputs
        if getattr(args, option) is not None and not any(getattr(args, i) for i in inputs):
            flag = "--" + option.replace("_", "-")
            raise DataError(f"{flag} only applies with {' or '.join('--' + i for i in inputs)}")
    if args.csv and not args.columns:
        raise DataError("--csv needs --columns A,B naming the header columns to use")


def prepare(args: argparse.Namespace) -> Manifest:
    from mpirnn.data.corpus import prepare_stdlib_corpus, prepare_text
    from mpirnn.data.prepare import prepare_csv, prepare_npy

    _check_options(args)
    common = {"shard_size": args.shard_size, "force": args.force}
    if args.text:
        suffixes = [s for group in args.suffix or [] for s in group.split(",") if s]
        return prepare_text(args.text, args.out, max_bytes=args.max_bytes,
                            suffixes=suffixes or None, **common)
    if args.csv:
        columns = [c.strip() for c in args.columns.split(",") if c.strip()]
        return prepare_csv(args.csv, args.out, columns=columns, window=args.window, **common)
    if args.npy:
        return prepare_npy(args.npy, args.out, vocab_size=args.vocab_size, **common)
    max_bytes = args.max_bytes if args.max_bytes is not None else 8_000_000
    return prepare_stdlib_corpus(args.out, max_bytes, **common)


def info(manifest: Manifest) -> str:
    from mpirnn.data.validate import dataset_bytes

    mib = dataset_bytes(manifest) / 2**20
    return "\n".join([f"{manifest.root}: {manifest.summary()}",
                      f"  source: {manifest.source}",
                      f"  on disk: {mib:.1f} MiB in "
                      f"{', '.join(s.file for s in manifest.shards[:3])}"
                      f"{' ...' if len(manifest.shards) > 3 else ''}"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            manifest = prepare(args)
            print(f"prepared {manifest.root}: {manifest.summary()}")
        elif args.command == "validate":
            from mpirnn.data.validate import validate_dataset

            manifest = validate_dataset(args.dir, check_checksum=True)
            print(f"ok {manifest.root}: {manifest.summary()}")
        else:
            print(info(load_manifest(args.dir)))
    except DataError as exc:
        print(f"{PROG}: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
