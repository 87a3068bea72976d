"""Command line for datasets: prepare, validate, info.

    python -m mpirnn.data prepare --out DIR (--text PATH... | --csv FILE --columns A,B
                                  [--window T] | --npy FILE [--kind tokens|series] | --stdlib)
                                  [--val-fraction F] [--fill interpolate|ffill|drop] [options]
    python -m mpirnn.data prepare --out DIR (--npy X.npy --labels Y.npy [--lengths L.npy]
                                  | --ts FILE.ts [--val FILE.ts] | --fasta FILE [--labels CSV|FASTA]
                                  | --audio DIR [--val DIR] [--mels 40 --hop-ms 10 --win-ms 25])
                                  [--task T] [--classes a,b,c] [--val-fraction F] [--seed S]
    python -m mpirnn.data validate DIR
    python -m mpirnn.data info DIR

Labelled rows (tag, classify, regress: docs/tasks.md) come from the second form.
validate and info cover every split (train, val). Notes (which kind a .npy was read as,
what --fill did) and warnings (a constant column) go to stdout as `note:` / `warning:`
lines. A DataError ends the command with one line `mpirnn.data: <message>` on stderr,
exit 2. docs/data.md describes the format and every option.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from mpirnn.data.manifest import Manifest, load_manifest
from mpirnn.data.audio_features import DEFAULT_HOP_MS, DEFAULT_MELS, DEFAULT_WIN_MS
from mpirnn.data.row_splits import DEFAULT_SPLIT_SEED
from mpirnn.data.splits import DEFAULT_VAL_FRACTION
from mpirnn.data.tasks import LABELLED_TASKS
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
    source.add_argument("--ts", metavar="FILE", help="UEA/UCR .ts file: labelled rows")
    source.add_argument("--fasta", metavar="FILE",
                        help="FASTA records (DNA, RNA, protein) as token rows; labels from --labels")
    source.add_argument("--audio", metavar="DIR",
                        help="WAV files in one sub-folder per class: rows of log-mel frames")
    labelled_options(prep)
    prep.add_argument("--columns", help="CSV columns to use, comma-separated: A,B")
    prep.add_argument("--time-column", metavar="NAME",
                      help="CSV: a column of ISO timestamps; its frequency is inferred and recorded "
                           "(calendar features, seasonal lags), a skipped step is a gap for --fill")
    prep.add_argument("--season", type=int, metavar="S",
                      help="CSV: the season in steps, the default seasonal lag (default with "
                           "--time-column: 52 weekly, 12 monthly, 7 daily, 24 hourly)")
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
    prep.add_argument("--kind", choices=("tokens", "series"),
                      help="npy: token ids or numbers (default: 1-D integers are tokens, "
                           "anything else numbers; the choice is printed)")
    prep.add_argument("--val-fraction", type=float, metavar="F",
                      help="hold out the final fraction F of the stream (of the rows for "
                           "[N, T, F] data; a seeded stratified draw of labelled rows) as the "
                           f"val split; 0: none (default {DEFAULT_VAL_FRACTION})")
    prep.add_argument("--fill", choices=("interpolate", "ffill", "drop"),
                      help="csv/npy series: handle missing values (empty, NA, NaN) instead of "
                           "stopping at the first; drop removes their time steps")
    prep.add_argument("--force", action="store_true", help="overwrite an existing dataset")

    for name, text in (("validate", "check every shard of every split, value by value, "
                                    "and the checksums"),
                       ("info", "print the manifest summary")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("dir", metavar="DIR", help="dataset directory")
    return parser


def labelled_options(prep: argparse.ArgumentParser) -> None:
    """The options of labelled inputs (docs/tasks.md)."""
    prep.add_argument("--labels", metavar="FILE",
                      help="npy: labels Y.npy, [N] or [N, T]; fasta: a CSV id,label or a FASTA "
                           "file of per-letter labels")
    prep.add_argument("--lengths", metavar="L.npy", help="npy with --labels: true lengths [N]")
    prep.add_argument("--task", choices=LABELLED_TASKS,
                      help="override the task inferred from the labels (printed)")
    prep.add_argument("--classes", metavar="A,B,C",
                      help="class names in id order (default: integer ids 0..max, or text "
                           "labels in order of first appearance; audio: sorted folders)")
    prep.add_argument("--seed", type=int, metavar="S",
                      help=f"labelled rows: seed of the random val split (default "
                           f"{DEFAULT_SPLIT_SEED})")
    prep.add_argument("--val", metavar="FILE.ts|DIR",
                      help="ts: the val split from its own file; audio: from its own folder of "
                           "the same class folders (other speakers)")
    prep.add_argument("--alphabet", metavar="NAME|LETTERS",
                      help="fasta: dna, rna, protein or the letters in id order (default: "
                           "inferred, printed)")
    prep.add_argument("--mels", type=int, metavar="N", help=f"audio: log-mel features per "
                      f"frame (default {DEFAULT_MELS})")
    prep.add_argument("--hop-ms", type=float, metavar="MS",
                      help=f"audio: frame step (default {DEFAULT_HOP_MS:g})")
    prep.add_argument("--win-ms", type=float, metavar="MS",
                      help=f"audio: frame window (default {DEFAULT_WIN_MS:g})")


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense with one input kind."""
    only = {"columns": "csv", "window": "csv", "time_column": "csv", "season": "csv", "vocab_size": "npy", "suffix": "text",
            "max_bytes": ("text", "stdlib"), "kind": "npy", "fill": ("csv", "npy"),
            "labels": ("npy", "fasta"), "lengths": "labels", "task": "labels",
            "classes": ("labels", "audio"), "seed": ("labels", "ts", "fasta", "audio"),
            "val": ("ts", "audio"), "alphabet": "fasta", "mels": "audio", "hop_ms": "audio",
            "win_ms": "audio"}
    for option, inputs in only.items():
        inputs = (inputs,) if isinstance(inputs, str) else inputs
        if getattr(args, option) is not None and not any(getattr(args, i) for i in inputs):
            flag = "--" + option.replace("_", "-")
            raise DataError(f"{flag} only applies with {' or '.join('--' + i for i in inputs)}")
    if args.csv and not args.columns:
        raise DataError("--csv needs --columns A,B naming the header columns to use")
    if args.labels and args.fill:
        raise DataError("--fill applies to series; labelled rows keep their own lengths "
                        "(--lengths): fill missing values before preparing")
    if args.val and args.val_fraction is not None:
        raise DataError("--val and --val-fraction both choose the val split: give one")


def prepare(args: argparse.Namespace) -> Manifest:
    from mpirnn.data.corpus import prepare_stdlib_corpus, prepare_text
    from mpirnn.data.prepare import prepare_csv, prepare_npy

    _check_options(args)
    fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
    common = {"shard_size": args.shard_size, "force": args.force, "val_fraction": fraction}
    if args.labels or args.ts or args.fasta or args.audio:
        return prepare_labelled(args, common)
    if args.text:
        suffixes = [s for group in args.suffix or [] for s in group.split(",") if s]
        return prepare_text(args.text, args.out, max_bytes=args.max_bytes,
                            suffixes=suffixes or None, **common)
    if args.csv:
        columns = [c.strip() for c in args.columns.split(",") if c.strip()]
        return prepare_csv(args.csv, args.out, columns=columns, window=args.window,
                           fill=args.fill, time_column=args.time_column, season=args.season, **common)
    if args.npy:
        return prepare_npy(args.npy, args.out, vocab_size=args.vocab_size, kind=args.kind,
                           fill=args.fill, **common)
    max_bytes = args.max_bytes if args.max_bytes is not None else 8_000_000
    return prepare_stdlib_corpus(args.out, max_bytes, **common)


def prepare_labelled(args: argparse.Namespace, common: dict) -> Manifest:
    """The labelled inputs: --npy with --labels, --ts, --fasta, --audio."""
    from mpirnn.data.audio_input import prepare_audio
    from mpirnn.data.fasta_input import prepare_fasta
    from mpirnn.data.labelled_npy import prepare_labelled_npy
    from mpirnn.data.ts_input import prepare_ts

    common["seed"] = DEFAULT_SPLIT_SEED if args.seed is None else args.seed
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    if args.ts:
        if args.val:
            common.pop("val_fraction")
        return prepare_ts(args.ts, args.out, val=args.val, **common)
    if args.audio:
        if args.val:
            common.pop("val_fraction")
        settings = {"mels": args.mels, "hop_ms": args.hop_ms, "win_ms": args.win_ms}
        return prepare_audio(args.audio, args.out, val=args.val, classes=classes, **common,
                             **{k: v for k, v in settings.items() if v is not None})
    if args.fasta:
        return prepare_fasta(args.fasta, args.out, labels=args.labels, alphabet=args.alphabet,
                             task=args.task, classes=classes, **common)
    return prepare_labelled_npy(args.npy, args.labels, args.out, lengths=args.lengths,
                                kind=args.kind, task=args.task, classes=classes,
                                vocab_size=args.vocab_size, **common)


def splits_of(manifest: Manifest) -> list[Manifest]:
    """Every split of the dataset, train first."""
    return [manifest] + [load_manifest(manifest.root, split=name) for name in manifest.splits[1:]]


def describe(manifest: Manifest) -> list[str]:
    """The lines after the summary: other splits, normalization, the fill report."""
    if manifest.has_lengths:
        from mpirnn.data.row_stats import describe_rows

        lines = describe_rows(splits_of(manifest))
        return lines + _normalization_lines(manifest)
    lines = []
    for held_out in splits_of(manifest)[1:]:
        unit = "rows" if manifest.kind == "sequences" else "steps"
        lines.append(f"  {held_out.split} split: {held_out.summary()} (the last "
                     f"{100 * manifest.val_fraction:g}% of the {unit})")
    return lines + _normalization_lines(manifest)


def _normalization_lines(manifest: Manifest) -> list[str]:
    lines = []
    if manifest.normalization is not None:
        n = manifest.normalization
        shown = ", ".join(f"{m:.4g}\u00b1{s:.4g}" for m, s in zip(n.mean[:4], n.std[:4]))
        more = f" ... ({len(n.mean)} columns)" if len(n.mean) > 4 else ""
        steps = " (valid steps only)" if manifest.has_lengths else ""
        lines.append(f"  normalized per column with the train split's mean\u00b1std{steps}: "
                     f"{shown}{more}")
    if manifest.fill is not None:
        lines.append(f"  filled: {manifest.fill.describe()}")
    if manifest.time is not None:
        lines.append(f"  time: {manifest.time.frequency} from {manifest.time.start} (column {manifest.time.column})")
    if manifest.season is not None:
        lines.append(f"  season: {manifest.season} steps")
    return lines


def info(manifest: Manifest) -> str:
    from mpirnn.data.validate import dataset_bytes

    lines = [f"{manifest.root}: {manifest.summary()}", f"  source: {manifest.source}"]
    lines += describe(manifest)
    for split in splits_of(manifest):
        mib = dataset_bytes(split) / 2**20
        lines.append(f"  on disk ({split.split}): {mib:.1f} MiB in "
                     f"{', '.join(s.file for s in split.shards[:3])}"
                     f"{' ...' if len(split.shards) > 3 else ''}")
    return "\n".join(lines)


class _NoteFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        label = "warning" if record.levelno >= logging.WARNING else "note"
        return f"{label}: {record.getMessage()}"


@contextlib.contextmanager
def _notes_to_stdout():
    """The data package's notes and warnings as `note:` / `warning:` lines on stdout."""
    logger = logging.getLogger(PROG)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_NoteFormatter())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _notes_to_stdout():
            if args.command == "prepare":
                manifest = prepare(args)
                print("\n".join([f"prepared {manifest.root}: {manifest.summary()}",
                                 *describe(manifest)]))
            elif args.command == "validate":
                from mpirnn.data.validate import validate_dataset

                for split in splits_of(load_manifest(args.dir)):
                    validate_dataset(split, check_checksum=True)
                    print(f"ok {split.root} ({split.split}): {split.summary()}")
            else:
                print(info(load_manifest(args.dir)))
    except DataError as exc:
        print(f"{PROG}: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """Console-script entry point (`mpirnn-data`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
